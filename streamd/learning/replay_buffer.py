"""Reservoir replay memory of uint8 images, optionally balanced over classes or tasks.

Plain mode is Vitter's reservoir: after n samples each one is kept with probability cap/n.
Balanced mode (class-balanced reservoir sampling, Chrysakis & Moens 2020) gives each group an
equal share: a newcomer evicts from the largest group, and inside a group the reservoir rule holds.
The buffer persists as an Arrow IPC table (uint8 bytes, never float).
"""
from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

Balance = Literal["none", "class", "task"]


class ReservoirBuffer:
    def __init__(self, capacity: int, balance: Balance = "none", seed: int = 0):
        self.capacity = capacity
        self.balance = balance
        self.images: torch.Tensor | None = None       # (capacity, C, H, W) uint8, CPU
        self.labels = torch.full((capacity,), -1, dtype=torch.long)
        self.tasks = torch.full((capacity,), -1, dtype=torch.long)
        self.size = 0
        self.seen = 0
        self.seen_per_group: dict[int, int] = {}
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def _group_of(self, label: int, task: int) -> int:
        return {"class": label, "task": task}.get(self.balance, 0)

    def _groups(self) -> torch.Tensor:
        return (self.labels if self.balance == "class" else self.tasks)[: self.size]

    def add(self, images: torch.Tensor, labels: torch.Tensor, tasks: torch.Tensor) -> None:
        images, labels, tasks = images.detach().cpu(), labels.cpu(), tasks.cpu()
        if self.images is None:
            self.images = torch.zeros((self.capacity, *images.shape[1:]), dtype=torch.uint8)
        for img, label, task in zip(images, labels.tolist(), tasks.tolist()):
            slot = self._slot_for(self._group_of(label, task))
            self.seen += 1
            if slot is not None:
                self.images[slot], self.labels[slot], self.tasks[slot] = img, label, task

    def _slot_for(self, group: int) -> int | None:
        n_group = self.seen_per_group.get(group, 0) + 1
        self.seen_per_group[group] = n_group
        if self.size < self.capacity:
            self.size += 1
            return self.size - 1
        if self.balance == "none":
            j = int(self.rng.integers(0, self.seen + 1))
            return j if j < self.capacity else None
        groups = self._groups()
        counts = torch.bincount(groups - groups.min())
        largest = int(counts.argmax()) + int(groups.min())
        in_group = (groups == group).nonzero().flatten()
        if group != largest and len(in_group) < int(counts.max()):
            victims = (groups == largest).nonzero().flatten()
            return int(victims[self.rng.integers(0, len(victims))])
        j = int(self.rng.integers(0, n_group))
        return int(in_group[j]) if j < len(in_group) else None

    def sample(self, n: int, device: torch.device | str = "cpu"):
        """n stored samples, uniformly with replacement (images, labels, tasks) on device."""
        idx = torch.from_numpy(self.rng.integers(0, self.size, size=n))
        return (self.images[idx].to(device, non_blocking=True), self.labels[idx].to(device), self.tasks[idx].to(device))

    # Persistence: Arrow IPC table + a small JSON of counters and RNG state.
    def to_arrow(self) -> pa.Table:
        shape = [] if self.images is None else list(self.images.shape[1:])
        flat = (self.images[: self.size].reshape(self.size, -1).numpy() if self.size else np.zeros((0, 0), np.uint8))
        images = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.uint8()), max(1, flat.shape[1])) if self.size else pa.array([], pa.list_(pa.uint8()))
        meta = {"capacity": self.capacity, "balance": self.balance, "seen": self.seen, "shape": shape,
                "seen_per_group": {str(k): v for k, v in self.seen_per_group.items()},
                "rng": self.rng.bit_generator.state}
        table = pa.table({"image": images, "label": pa.array(self.labels[: self.size].numpy()),
                          "task": pa.array(self.tasks[: self.size].numpy())})
        return table.replace_schema_metadata({"streamd": json.dumps(meta)})

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "ReservoirBuffer":
        meta = json.loads(table.schema.metadata[b"streamd"])
        buf = cls(meta["capacity"], meta["balance"])
        buf.seen, buf.size = meta["seen"], table.num_rows
        buf.seen_per_group = {int(k): v for k, v in meta["seen_per_group"].items()}
        buf.rng.bit_generator.state = meta["rng"]
        if meta["shape"]:
            buf.images = torch.zeros((buf.capacity, *meta["shape"]), dtype=torch.uint8)
            if buf.size:
                flat = table.column("image").combine_chunks().flatten().to_numpy()
                buf.images[: buf.size] = torch.from_numpy(flat.copy()).view(buf.size, *meta["shape"])
        buf.labels[: buf.size] = torch.from_numpy(table.column("label").to_numpy().copy())
        buf.tasks[: buf.size] = torch.from_numpy(table.column("task").to_numpy().copy())
        return buf
