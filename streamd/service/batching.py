"""Decoded records waiting for a training step, and the rule for when that step is due.

Every record read goes into the pending batch's acks, trained or dead-lettered, so that it is
acked (and its position committed) only together with the step that covers it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from streamd.config import LearnerConfig
from streamd.connectors.base import Record


@dataclass
class PendingBatch:
    """Decoded images waiting for a step, and every record (trained or dead-lettered) to ack after it."""

    images: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    acks: list[tuple[Record, str]] = field(default_factory=list)   # (record, audit status)
    header: str | None = None
    first_position: str = ""
    started: float = 0.0

    def acks_with_held_out(self, kept: torch.Tensor) -> list[tuple[Record, str]]:
        """The acks with the images the prober held out marked ``held_out`` instead of ``trained``."""
        kept_rows = iter(kept.tolist())
        return [(r, status if status != "trained" or next(kept_rows) else "held_out") for r, status in self.acks]


class Batcher:
    def __init__(self, cfg: LearnerConfig):
        self.cfg = cfg
        self.pending = PendingBatch()

    def add(self, record: Record, image: torch.Tensor, label: int, header: str | None) -> PendingBatch | None:
        """Adds an image; a change of the task header first closes (and returns) the batch before it."""
        closed = self.take() if self.pending.images and header is not None and header != self.pending.header else None
        p = self.pending
        if not p.images:
            p.header, p.first_position, p.started = header, str(record.position), time.monotonic()
        p.images.append(image)
        p.labels.append(label)
        p.acks.append((record, "trained"))
        return closed

    def add_dead(self, record: Record, reason: str) -> None:
        """A record whose dead letter is written: acked with the next step (or at once, if no image waits)."""
        self.pending.acks.append((record, f"dead:{reason}"))

    def due(self, drained: bool) -> bool:
        """Full; or waited max_wait with min_batch_size images; or held max_hold, however small;
        or the source is drained (no more images will come)."""
        p, lc = self.pending, self.cfg
        if not p.images:
            return False
        waited = time.monotonic() - p.started
        return (len(p.images) >= lc.batch_size or waited >= lc.max_hold_seconds
                or (waited >= lc.max_wait_seconds and len(p.images) >= lc.min_batch_size) or drained)

    def take(self) -> PendingBatch:
        batch, self.pending = self.pending, PendingBatch()
        return batch
