"""Data-parallel training across ``torchrun`` ranks (torch.distributed: gloo on CPU, nccl on GPUs).

Every rank runs the whole daemon loop on its own share of the stream: the ranks join ONE Kafka
consumer group, so Kafka's group assignment hands each rank disjoint partitions. The ranks meet
before every step (``agree``): one small all-reduce says how many rows each rank brings, and
carries rank 0's decisions (current task, frozen encoder blocks, "checkpoint now") plus the
ranks' wishes to stop, so all ranks switch tasks, freeze, checkpoint and stop together.

Gradients: an optimizer step pre-hook all-reduces the gradients of the learner's optimizer, each
rank weighted by its number of stream rows, so every rank applies the same averaged update and
the weights stay identical without wrapping the objective (momentum targets follow, since they
are a function of the weights). Buffers (BatchNorm statistics) are taken from rank 0, as DDP
does. A rank without a batch, or whose loss was not finite, still takes part in the step with
weight 0 (``idle_step``: the learner's ordinary step tail, plugins' ``after_step`` included, so
step-counted plugin state stays identical), so no rank ever waits for data that another rank does
not have. When a plugin rebuilds the optimizer mid-task (a phase change, e.g. ExSSNeT's mask
transfer), rank 0's modules are broadcast: a decision taken on each rank's own rows then still
leaves one model.

The daemon (``streamd/service/daemon.py``) holds a ``Cluster`` at all times and calls it at a few named
seams; with one rank every method is a cheap no-op, so one loop serves both cases.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook

_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Agreement:
    """What all ranks do in this round (one step, or none when no rank has rows)."""

    rows: int             # stream rows summed over the ranks: 0 means nobody steps
    task: int             # rank 0's task: every rank begins it before stepping
    frozen_blocks: int    # rank 0's frozen encoder prefix
    checkpoint: bool      # rank 0 decided to checkpoint after this step
    stop: bool            # some rank was asked to stop (SIGTERM)
    idle: int             # ranks whose sources are drained (all idle: --exit-when-idle may stop)


class Cluster:
    """This process's place among the ranks; with one rank every method is a cheap no-op."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None):
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")   # where collectives' tensors live (nccl: the GPU)
        self._learner = None
        self.task = -1               # the last task all ranks agreed on
        self._weight = 1.0
        self._hook = None
        self._optimizer = None       # the learner's optimizer as of the last broadcast
        self._positions: dict = {}   # every rank's source positions as of the last gather

    @classmethod
    def from_env(cls, device: torch.device | None = None) -> "Cluster":
        """Joins the process group when torchrun started several ranks (WORLD_SIZE > 1)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        on_gpu = device is not None and device.type == "cuda"
        if on_gpu:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if on_gpu else "gloo", timeout=_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), device if on_gpu else None)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # Per-round agreement ---------------------------------------------------------------------
    def agree(self, rows: int, task: int, frozen_blocks: int, checkpoint: bool, stop: bool,
              idle: bool) -> Agreement:
        if not self.enabled:
            return Agreement(rows, task, frozen_blocks, checkpoint, stop, int(idle))
        main = float(self.is_main)
        vec = torch.tensor([rows, task * main, frozen_blocks * main, float(checkpoint) * main, float(stop),
                            float(idle)], dtype=torch.float64, device=self.device)
        dist.all_reduce(vec)
        rows, task, frozen, ckpt, stop, idle = (int(round(v)) for v in vec.tolist())
        return Agreement(rows, task, frozen, bool(ckpt), bool(stop), idle)

    def in_turn(self, action) -> None:
        """Runs ``action`` on one rank after the other, the highest rank first and rank 0 last.
        Used for leaving the Kafka group. On the test broker (tansu), members that left within
        a few ms of each other with rank 0 first left the group with a leader no member holds:
        the next start's members each waited for the leader's assignment and rebalanced until
        they gave up (3 of 3 restarts); with rank 0 last, 0 of 3 (tests/test_distributed.py)."""
        for rank in reversed(range(self.world_size)):
            if rank == self.rank:
                action()
            if self.enabled:
                dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank (every rank gets the same answer)."""
        if not self.enabled:
            return flag
        vec = torch.tensor([float(flag)], dtype=torch.float64, device=self.device)
        dist.all_reduce(vec)
        return bool(vec.item())

    def apply(self, agreement: Agreement, learner) -> None:
        """Brings this rank's learner to rank 0's frozen prefix and task, before the step.

        Compared with the last *agreed* task, never with the learner's own, so that every rank
        takes the same branch and the broadcast below stays matched. A first step with no task
        yet begins task 0 (as ``Learner.step`` would) on every rank at once.
        """
        if agreement.frozen_blocks != learner.encoder.frozen_blocks:
            learner.encoder.freeze_prefix(agreement.frozen_blocks)
        task = 0 if agreement.task < 0 and agreement.rows and self.task < 0 else agreement.task
        if task != self.task and task >= 0:
            self.task = task
            learner.begin_task(task)
            self.broadcast_modules(learner)   # plugins may have built new modules (predictors)

    def after_step(self, learner) -> None:
        """A plugin that rebuilt the optimizer during the step changed what learns (a phase): all
        ranks did so at the same step, and now take rank 0's modules."""
        if self.enabled and learner.optimizer is not self._optimizer:
            self.broadcast_modules(learner)

    # Gradients ----------------------------------------------------------------------------------
    def attach(self, learner) -> None:
        """Starts averaging ``learner``'s gradients and gives every rank rank 0's weights."""
        self.task = learner.task
        if not self.enabled:
            return
        self._learner = learner
        self._hook = register_optimizer_step_pre_hook(self._average_gradients)
        self.broadcast_modules(learner)

    @contextlib.contextmanager
    def weighted(self, rows: int):
        """Inside: this rank's gradients count with weight ``rows`` in the average."""
        self._weight = float(rows)
        try:
            yield
        finally:
            self._weight = 1.0

    def idle_step(self, learner) -> None:
        """Takes part in a step without data (or after a non-finite loss, when the others are
        already in the gradient all-reduce): contributes nothing, applies the others' average.
        With one rank there are no others: nothing happens."""
        if not self.enabled:
            return
        with self.weighted(0):
            learner.step_without_rows()       # the pre-hook fills in the averaged gradients

    def _average_gradients(self, optimizer, args, kwargs) -> None:
        learner = self._learner
        if learner is None or optimizer is not learner.optimizer:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        w = self._weight
        grads = [p.grad.reshape(-1) * w if p.grad is not None else torch.zeros(p.numel(), device=p.device)
                 for p in params]
        has_grad = torch.tensor([w if p.grad is not None else 0.0 for p in params], device=params[0].device)
        flat = torch.cat(grads + [has_grad, torch.tensor([w], device=has_grad.device)])
        dist.all_reduce(flat)
        total = float(flat[-1])
        has_grad = flat[-1 - len(params):-1]
        offset = 0
        for p, contributed in zip(params, has_grad.tolist()):
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).div_(total) if contributed > 0 and total > 0 else None
            offset += n
        self._broadcast_buffers(learner)

    # Weights and buffers --------------------------------------------------------------------------
    def _modules(self, learner) -> list[torch.nn.Module]:
        return [learner.objective] + [m for p in learner.plugins for m in p.trainable_modules()]

    @torch.no_grad()
    def broadcast_modules(self, learner) -> None:
        """Rank 0's parameters and buffers to every rank (at start and when modules appear)."""
        self._optimizer = learner.optimizer
        if not self.enabled:
            return
        for module in self._modules(learner):
            for t in module.state_dict(keep_vars=True).values():
                dist.broadcast(t.data, 0)

    @torch.no_grad()
    def _broadcast_buffers(self, learner) -> None:
        for module in self._modules(learner):
            for b in module.buffers():
                dist.broadcast(b, 0)

    # Checkpoints --------------------------------------------------------------------------------
    def gather_positions(self, own: dict) -> dict:
        """Collects every rank's source positions (all ranks call it, right before a checkpoint)
        and returns ``positions(own)``."""
        if self.enabled:
            everyone: list[dict] = [{} for _ in range(self.world_size)]
            dist.all_gather_object(everyone, own)
            self._positions = merge_positions(everyone)
        return self.positions(own)

    def positions(self, own: dict) -> dict:
        """What a checkpoint records: this rank's positions, and the others' as of the last gather,
        so any rank can resume any partition after a rebalance."""
        return merge_positions([self._positions, own]) if self.enabled else own

    def adopt_main_state(self, learner, positions: dict | None) -> dict | None:
        """After each rank restored its own checkpoint (``positions`` are its own, None without
        one): every rank takes rank 0's learner state (its own plugins' state kept) and rank 0's
        source positions, so all ranks restart identical even when a crash hit between two ranks'
        writes. Returns the positions to seek."""
        if self.enabled:
            learner_state = {k: v for k, v in learner.state_dict().items() if k != "plugins"}
            box = [{"learner": learner_state, "positions": positions} if self.is_main else None]
            dist.broadcast_object_list(box, src=0)
            learner.load_state_dict({**box[0]["learner"], "plugins": learner.state_dict()["plugins"]})
            positions = box[0]["positions"] if box[0]["positions"] is not None else positions
        self.attach(learner)
        return positions

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def merge_positions(states: list[dict]) -> dict:
    """Union of Kafka position states ``{"offsets": {key: offset}, "partial": {key: ...}}``.

    Partitions are disjoint across ranks; a key may still appear twice right after a rebalance
    (a rank keeps a checkpoint target for a partition it no longer owns). Offsets only move
    forward, so the highest offset is the live one, and its ``partial`` entry goes with it.
    """
    offsets: dict[str, int] = {}
    partial: dict[str, dict] = {}
    for state in states:
        for key, offset in (state or {}).get("offsets", {}).items():
            if key not in offsets or offset > offsets[key]:
                offsets[key] = offset
                partial.pop(key, None)
                if key in (state.get("partial") or {}):
                    partial[key] = state["partial"][key]
    return {"offsets": offsets, "partial": partial}


def weights_digest(learner) -> str:
    """sha256 over every parameter and buffer of the objective: equal digests = equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(learner.objective.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
