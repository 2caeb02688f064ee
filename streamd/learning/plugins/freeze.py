"""Progressive task-correlated layer freezing (Yang et al. 2023), meant to run as "lump+freeze".

At a task start a frozen copy of the encoder (the previous task's end state) is kept and the
first stream images of the new task are buffered (uint8). After ``decide_after`` steps of the
new task (or at its end, if it is shorter) each block's features of the copy and of the current
encoder on those images (eval mode) are compared with debiased linear CKA (a few hundred probe
images against 10^4-10^5 values per feature map is the regime where the plain estimator drifts
towards 1 even for unrelated features). Blocks the new task barely changes are task-correlated,
so the bottom-up prefix of blocks whose CKA passes ``threshold`` is frozen
(at most ``max_new_blocks`` more per task, never the last block). Frozen blocks run without
autograd and with fixed BN statistics (``Encoder.freeze_prefix``); their parameters get no
grad, so the optimizer (SGD, LARS, AdamW all skip grad-less parameters) applies neither
momentum nor weight decay to them. The first steps of a task train all unfrozen blocks; the
decision is never undone.
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field

from streamd.learning.plugins.base import Plugin, PluginOptions, register
from streamd.learning.similarity import centered_gram, cka_from_grams


def frozen_prefix_after(cka: list[float], frozen: int, threshold: float, max_new: int) -> int:
    """How many leading blocks to freeze: extend ``frozen`` while the next block's CKA passes."""
    limit = min(frozen + max_new, len(cka) - 1)
    k = frozen
    while k < limit and cka[k] >= threshold:
        k += 1
    return k


@torch.no_grad()
def block_cka(ctx, previous, images: torch.Tensor, batch_size: int = 64) -> list[float]:
    """Per-block linear CKA between ``previous`` and the learner's encoder (eval mode) on ``images``."""
    current = ctx.encoder
    was_training = current.training
    current.eval()
    grams = {}
    for name, encoder in (("previous", previous), ("current", current)):
        feats = [[] for _ in encoder.block_names]
        for chunk in images.split(batch_size):
            with ctx.autocast():
                outs = encoder.forward_blocks(ctx.preprocess(chunk.to(ctx.device)))
            for i, out in enumerate(outs):
                feats[i].append(out.float())
        grams[name] = [centered_gram(torch.cat(f)) for f in feats]
    current.train(was_training)
    return [float(cka_from_grams(k, l, debiased=True)) for k, l in zip(grams["previous"], grams["current"])]


class FreezeOptions(PluginOptions):
    threshold: float = Field(0.9, ge=-1, le=1, description="freeze a block whose CKA between tasks reaches this")
    max_new_blocks: int = Field(1, ge=1, description="blocks one decision may add to the frozen prefix")
    decide_after: int = Field(50, ge=1, description="steps into a new task before deciding")
    probe_images: int = Field(256, ge=4, description="new-task images the CKA is measured on (debiased: > 3)")
    flops_images: int = Field(4, ge=1, description="images the saved-FLOPs ratio is measured on")


@register("freeze", FreezeOptions)
class FreezePlugin(Plugin):
    def __init__(self, threshold: float, max_new_blocks: int, decide_after: int, probe_images: int,
                 flops_images: int):
        self.threshold = threshold
        self.max_new_blocks = max_new_blocks
        self.decide_after = decide_after
        self.probe_images = probe_images
        self.flops_images = flops_images
        self.previous = None                  # frozen copy of the encoder while a decision is pending
        self.probe: list[torch.Tensor] = []   # uint8 stream images of the new task
        self.steps_in_task = 0
        self.history: list[dict] = []         # one entry per decision: task, cka per block, frozen
        self.saved_ratio = 0.0

    def setup(self, ctx):
        self.ctx = ctx

    def on_task_start(self, ctx, task):
        self.steps_in_task = 0
        self.probe = []
        self.previous = None
        if ctx.step_count > 0:  # a previous task exists to compare with
            self.previous = self._frozen_copy(ctx.encoder)

    def _frozen_copy(self, encoder):
        previous = copy.deepcopy(encoder).requires_grad_(False)
        previous.frozen_blocks = 0
        return previous.eval()

    def after_step(self, ctx, batch, out):
        if self.previous is None:
            return
        self.steps_in_task += 1
        if sum(len(p) for p in self.probe) < self.probe_images:
            self.probe.append(batch.images[: batch.n_stream].cpu())
        if self.steps_in_task >= self.decide_after:
            self.decide(ctx)

    def on_task_end(self, ctx, task):
        if self.previous is not None and self.probe:
            self.decide(ctx)

    def decide(self, ctx) -> None:
        images = torch.cat(self.probe)[: self.probe_images]
        cka = block_cka(ctx, self.previous, images)
        frozen = frozen_prefix_after(cka, ctx.encoder.frozen_blocks, self.threshold, self.max_new_blocks)
        ctx.encoder.freeze_prefix(frozen)
        self.history.append({"task": ctx.task, "step": ctx.step_count, "cka": cka, "frozen": frozen})
        self.saved_ratio = self._saved_ratio(ctx, images[: self.flops_images])
        self.previous, self.probe = None, []

    def _saved_ratio(self, ctx, images: torch.Tensor) -> float:
        """1 - backward FLOPs with the frozen prefix / backward FLOPs with nothing frozen."""
        encoder = ctx.encoder
        frozen = encoder.frozen_blocks
        if frozen == 0:
            return 0.0
        with_frozen = ctx.backward_flops(images)
        encoder.freeze_prefix(0)
        try:
            without = ctx.backward_flops(images)
        finally:
            encoder.freeze_prefix(frozen)
        return 1.0 - with_frozen / without

    def state_dict(self):
        state = {"steps_in_task": self.steps_in_task, "history": self.history, "saved_ratio": self.saved_ratio}
        if self.previous is not None:
            state["previous"] = self.previous.state_dict()
            state["probe"] = self.probe
        return state

    def load_state_dict(self, state):
        if not state:
            return
        self.steps_in_task = state["steps_in_task"]
        self.history = state["history"]
        self.saved_ratio = state["saved_ratio"]
        self.previous, self.probe = None, []
        if "previous" in state:
            self.previous = self._frozen_copy(self.ctx.encoder)
            self.previous.load_state_dict(state["previous"])
            self.probe = list(state["probe"])

    def metrics(self):
        return {"frozen_blocks": float(self.ctx.encoder.frozen_blocks),
                "backward_flops_saved_ratio": self.saved_ratio}
