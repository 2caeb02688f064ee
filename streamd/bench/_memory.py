"""Peak training memory of a strategy, measured honestly on either device.

GPU: ``torch.cuda.max_memory_allocated`` over the whole run (the caching allocator's own peak).
CPU: torch has no allocator statistics there; tracemalloc does not see torch's allocations and
ru_maxrss mixes in the interpreter and the dataset. So on CPU we count what one training step must
hold at once: parameters, gradients, optimizer state and every tensor autograd saves for backward
(via ``saved_tensors_hooks``), each storage once. Frozen blocks run without autograd and save
nothing, so the number shows what freezing saves.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from streamd.learning.learner import Learner

CPU_METHOD = "cpu: bytes of parameters + gradients + optimizer state + tensors saved for backward in one step"
CUDA_METHOD = "cuda: torch.cuda.max_memory_allocated over the run"


def method(device: torch.device) -> str:
    return CUDA_METHOD if device.type == "cuda" else CPU_METHOD


def _state_tensors(learner: "Learner"):
    params = learner.trainable_parameters() + list(learner.objective.buffers())
    yield from params
    yield from (p.grad for p in params if getattr(p, "grad", None) is not None)
    for state in learner.optimizer.state.values():
        yield from (v for v in state.values() if torch.is_tensor(v))


def step_training_bytes(learner: "Learner", step: Callable[[], object]) -> int:
    """Runs ``step`` (one learner step) and returns the CPU-method byte count of that step."""
    storages: dict[int, int] = {}

    def remember(t: torch.Tensor) -> None:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        remember(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    for t in _state_tensors(learner):
        remember(t)
    return sum(storages.values())
