"""Task boundaries: an explicit task header, or a change in the distribution of the encoder's embeddings.

The daemon hands every batch to ``BoundaryDetector.observe`` before training on it (a batch never
spans two header values). Header names map to consecutive task ids, kept in the state so that a
restart gives the same ids. Without headers a drift detector compares the newest window of images
with a reservoir of the current segment: both are embedded by the *current* encoder, so the
encoder's own training does not look like drift. The statistic (unbiased MMD^2, RBF kernel with
the median-heuristic bandwidth) is standardized by its mean and spread within the segment and fed
to a Page-Hinkley test for an upward shift; a minimum segment length and a cooldown keep one shift
from raising a run of alarms.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger("streamd.boundary")

Embed = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Boundary:
    kind: str           # "header" | "drift"
    task: int           # id of the task that starts here
    name: str           # the header value, or "drift-<id>"
    position: str       # the first record of the new task
    batch: int          # batches observed before this one
    statistic: float | None = None


def mmd2_rbf(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared MMD between samples x (n,d) and y (m,d); bandwidth = median pairwise distance."""
    z = torch.cat([x, y]).float()
    d2 = torch.cdist(z, z).pow(2)
    n = len(x)
    off_diag = ~torch.eye(len(z), dtype=torch.bool)
    bandwidth = d2[off_diag].median().clamp_min(1e-12)
    k = torch.exp(-d2 / bandwidth)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    m = len(y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


class PageHinkley:
    """Sequential test for an upward shift in the mean of a standardized series."""

    def __init__(self, delta: float, threshold: float):
        self.delta, self.threshold = delta, threshold
        self.cum = self.low = 0.0

    def update(self, z: float) -> bool:
        self.cum += z - self.delta
        self.low = min(self.low, self.cum)
        return self.cum - self.low > self.threshold

    def reset(self) -> None:
        self.cum = self.low = 0.0


class DriftDetector:
    """Windowed two-sample statistic vs a reservoir of the current segment -> Page-Hinkley."""

    def __init__(self, window: int = 64, reference_size: int = 256, min_segment_batches: int = 8,
                 cooldown_batches: int = 8, calibration_batches: int = 4, ph_delta: float = 0.5,
                 ph_threshold: float = 8.0, seed: int = 0):
        self.window_size, self.reference_size = window, reference_size
        self.min_segment, self.cooldown, self.calibration = min_segment_batches, cooldown_batches, calibration_batches
        self.ph = PageHinkley(ph_delta, ph_threshold)
        self.rng = torch.Generator().manual_seed(seed)
        self.batches_since_alarm = cooldown_batches
        self.last_statistic: float | None = None
        self.restart(torch.zeros(0, dtype=torch.uint8))

    def restart(self, images: torch.Tensor) -> None:
        """A new segment begins with ``images``: they become its first reference rows."""
        self.reference = images[: self.reference_size].clone()
        self.offered = len(images)              # rows offered to the reservoir in this segment
        self.window = images[:0].clone()
        self.batches_in_segment = 0
        self.stat_count, self.stat_mean, self.stat_m2 = 0, 0.0, 0.0
        self.ph.reset()

    def update(self, images: torch.Tensor, embed: Embed) -> bool:
        """Adds a batch (uint8 N,C,H,W); True when the segment's distribution has shifted at it."""
        self.batches_in_segment += 1
        self.batches_since_alarm += 1
        window = torch.cat([self.window, images]) if len(self.window) else images
        self._offer(window[: -self.window_size])
        self.window = window[-self.window_size:]
        if len(self.reference) < min(self.window_size, self.reference_size) or len(self.window) < 8:
            return False
        feats = F.normalize(embed(torch.cat([self.window, self.reference])).float(), dim=1)
        stat = mmd2_rbf(feats[: len(self.window)], feats[len(self.window):])
        self.last_statistic = stat
        alarm = False
        if self.stat_count >= self.calibration:
            z = (stat - self.stat_mean) / self._spread()
            alarm = self.ph.update(z)
        if alarm and self.batches_in_segment >= self.min_segment and self.batches_since_alarm > self.cooldown:
            self.batches_since_alarm = 0
            self.restart(self.window)
            return True
        if not alarm:
            self._track(stat)
        return False

    def _spread(self) -> float:
        """Standard deviation of the null statistic, floored: a calm segment must not make noise huge."""
        var = self.stat_m2 / max(1, self.stat_count - 1)
        return max(math.sqrt(var), 0.1 * abs(self.stat_mean), 1e-3)

    def _track(self, stat: float) -> None:
        self.stat_count += 1
        delta = stat - self.stat_mean
        self.stat_mean += delta / self.stat_count
        self.stat_m2 += delta * (stat - self.stat_mean)

    def _offer(self, rows: torch.Tensor) -> None:
        """Reservoir sampling (Vitter's R) of the rows that left the window."""
        free = max(0, self.reference_size - len(self.reference))
        if free:
            head, rows = rows[:free], rows[free:]
            self.reference = torch.cat([self.reference, head]) if len(self.reference) else head.clone()
            self.offered += len(head)
        if not len(rows):
            return
        seen = self.offered + 1 + torch.arange(len(rows), dtype=torch.float64)
        slots = (torch.rand(len(rows), generator=self.rng, dtype=torch.float64) * seen).long()
        for row, j in zip(rows, slots.tolist()):
            if j < self.reference_size:
                self.reference[j] = row
        self.offered += len(rows)

    def state_dict(self) -> dict:
        return {"reference": self.reference, "window": self.window, "offered": self.offered,
                "batches_in_segment": self.batches_in_segment, "batches_since_alarm": self.batches_since_alarm,
                "stat": [self.stat_count, self.stat_mean, self.stat_m2],
                "ph": [self.ph.cum, self.ph.low], "rng": self.rng.get_state(),
                "last_statistic": self.last_statistic}

    def load_state_dict(self, state: dict) -> None:
        self.reference, self.window, self.offered = state["reference"], state["window"], state["offered"]
        self.batches_in_segment, self.batches_since_alarm = state["batches_in_segment"], state["batches_since_alarm"]
        self.stat_count, self.stat_mean, self.stat_m2 = state["stat"]
        self.ph.cum, self.ph.low = state["ph"]
        self.rng.set_state(state["rng"])
        self.last_statistic = state["last_statistic"]


class BoundaryDetector:
    """Decides the task of each batch: headers (mode header|both) win, drift (mode drift|both) otherwise."""

    def __init__(self, mode: str = "both", **drift_options):
        self.mode = mode
        self.drift = DriftDetector(**drift_options) if mode in ("drift", "both") else None
        self.task_ids: dict[str, int] = {}   # header name -> task id
        self.header: str | None = None       # header value of the current task
        self.task = -1
        self.next_id = 0
        self.batches = 0
        self.boundaries: list[Boundary] = []

    def observe(self, images: torch.Tensor, header: str | None, position: str, embed: Embed) -> Boundary | None:
        """Called before a batch is trained; returns the boundary that starts at this batch, if any."""
        boundary = None
        if header is not None and self.mode in ("header", "both"):
            if header != self.header:
                boundary = self._start(self._header_task(header), header, "header", position)
                if self.drift:
                    self.drift.restart(images)
        elif self.drift is not None:
            if self.drift.update(images, embed):
                boundary = self._start(self.next_id, f"drift-{self.next_id}", "drift", position,
                                       self.drift.last_statistic)
        if self.task < 0:  # the stream's first batch starts task 0 without a boundary
            self.task, self.next_id = 0, 1
        self.batches += 1
        return boundary

    def _header_task(self, header: str) -> int:
        if header not in self.task_ids:
            self.task_ids[header] = self.next_id
            self.next_id += 1
        return self.task_ids[header]

    def _start(self, task: int, name: str, kind: str, position: str, stat: float | None = None) -> Boundary | None:
        first = self.task < 0
        self.task, self.header = task, (name if kind == "header" else None)
        self.next_id = max(self.next_id, task + 1)
        if first:
            return None
        b = Boundary(kind, task, name, position, self.batches, stat)
        self.boundaries.append(b)
        log.info("task boundary (%s): task %d %r starts at %s (batch %d%s)", kind, task, name, position,
                 self.batches, "" if stat is None else f", MMD^2 {stat:.4f}")
        return b

    @property
    def statistic(self) -> float | None:
        return self.drift.last_statistic if self.drift else None

    def state_dict(self) -> dict:
        return {"task_ids": dict(self.task_ids), "header": self.header, "task": self.task, "next_id": self.next_id,
                "batches": self.batches, "boundaries": [asdict(b) for b in self.boundaries],
                "drift": self.drift.state_dict() if self.drift else None}

    def load_state_dict(self, state: dict) -> None:
        self.task_ids, self.header, self.task = dict(state["task_ids"]), state["header"], state["task"]
        self.next_id, self.batches = state["next_id"], state["batches"]
        self.boundaries = [Boundary(**b) for b in state["boundaries"]]
        if self.drift and state["drift"] is not None:
            self.drift.load_state_dict(state["drift"])


def build_boundary_detector(cfg) -> BoundaryDetector:
    """From a ``streamd.config.BoundaryConfig``."""
    opts = cfg.model_dump(exclude={"mode"})
    return BoundaryDetector(cfg.mode, **opts)
