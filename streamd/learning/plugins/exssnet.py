"""ExSSNeT (Yadav & Bansal 2023) on SupSup supermasks, driven by the SSL objective.

The encoder is converted to supermask layers (models/supermask.py): one mask "slot" per task.
A task runs through phases, counted in steps because a stream's length is unknown:

- ``select`` (every task but the first): the encoder is fixed while ``select_batches`` stream
  batches are kept; then KKT picks the earlier slot whose mask fits them best and copies its
  scores as the new slot's start. The test is leave-one-out kNN accuracy of the slot's features
  when at least half the kept images carry labels, else the ``infer_by`` rule below (eval mode,
  no update anywhere). The kept images were never trained on by the earlier masks, so for them
  they are held out.
- ``scores`` (``score_steps`` steps): only the slot's scores learn; every weight is fixed.
- ``weights`` (until the task ends): only weights in ``mask_t AND NOT union(earlier masks)``
  learn; the rest are reset after each optimizer step, so earlier tasks' weights stay
  bit-identical (momentum and weight decay included).

A task id seen before reuses its slot with the encoder fixed (its weights are now shared).
Inference: ``use_task(ctx, task)`` when the task id is known (e.g. from a header), else
``infer_task`` picks a slot for a batch of images. SupSup's one-shot entropy gradient needs a
classifier's outputs, which SSL has not, so by default (``infer_by="features"``) each task keeps
a Gaussian of its features under its own mask (fitted at its end on a reservoir of its stream
images; streamd/learning/feature_density.py) and the task whose Gaussian finds the batch least out of
distribution wins. ``infer_by="ssl_loss"`` picks the lowest SSL loss instead; on mnist5k class
tasks that finds the task of a 64-image chunk no better than chance (the heads are shared and
keep training, so every slot's loss is measured through heads tuned to the newest mask), and for
KKT without labels it picked the right earlier mask of a recurring distribution in 1 of 3 seeds
where the Gaussians did in 3 of 3 (docs/results.md).
The projection/prediction heads are shared and always train; only encoder features are per task.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from streamd.models.objectives import MomentumObjective
from streamd.models.supermask import add_slot, masked_layers, num_slots, to_supermask, use_slot
from streamd.learning.feature_density import FeatureGaussian
from streamd.learning.plugins.base import PluginOptions, TaskMasks, register
from streamd.learning.replay_buffer import ReservoirBuffer

PHASES = ("select", "scores", "weights", "fixed")


def knn_loo_accuracy(feats: torch.Tensor, labels: torch.Tensor, k: int = 10) -> float:
    """Leave-one-out kNN accuracy (cosine, similarity-weighted votes, as in the kNN monitor)."""
    feats = F.normalize(feats.float(), dim=1)
    sim = feats @ feats.T
    sim.fill_diagonal_(float("-inf"))
    k = min(k, len(labels) - 1)
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(labels), int(labels.max()) + 1)
    votes.scatter_add_(1, labels[top_idx], (top_sim / 0.1).exp())
    return float((votes.argmax(1) == labels).float().mean())


class ExSSNeTOptions(PluginOptions):
    density: float = Field(0.1, gt=0, le=1, description="share of weights each task's mask keeps")
    score_steps: int = Field(100, ge=1, description="steps that train only the new mask's scores")
    select_batches: int = Field(2, ge=1, description="stream batches KKT compares earlier masks on")
    knn_k: int = Field(10, ge=1)
    infer_by: Literal["features", "ssl_loss"] = Field("features", description="task inference rule")
    inference_images: int = Field(256, ge=2, description="images per task its feature Gaussian is fitted on")


@register("exssnet", ExSSNeTOptions)
class ExSSNeTPlugin(TaskMasks):
    def __init__(self, density: float, score_steps: int, select_batches: int, knn_k: int,
                 infer_by: Literal["features", "ssl_loss"], inference_images: int):
        self.density = density
        self.infer_by = infer_by
        self.inference_images = inference_images
        self.task_images = ReservoirBuffer(inference_images)   # the current task's, for its Gaussian
        self.gaussians: dict[int, FeatureGaussian] = {}        # slot -> its task's features at the task's end
        self.score_steps = score_steps
        self.select_batches = select_batches
        self.knn_k = knn_k
        self.slots: dict[int, int] = {}        # task id -> mask slot
        self.slot = 0                          # the slot being trained
        self.phase = "scores"
        self.steps_in_phase = 0
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []   # (uint8 images, labels) for KKT
        self.history: list[dict] = []          # KKT decisions: task, candidate slots, scores, chosen

    # Setup and task boundaries ------------------------------------------------------------------
    def setup(self, ctx):
        self.ctx = ctx
        to_supermask(ctx.encoder, self.density)
        self._rebuild_target()
        self._apply_phase()

    def _rebuild_target(self) -> None:
        if isinstance(self.ctx.objective, MomentumObjective):
            self.ctx.objective.build_target()  # the EMA copy must have the same slots

    def on_task_start(self, ctx, task):
        if task in self.slots:
            self.slot, phase = self.slots[task], "fixed"
        else:
            self.slot = len(self.slots)
            if self.slot >= num_slots(ctx.encoder):
                add_slot(ctx.encoder)
                self._rebuild_target()
            self.slots[task] = self.slot
            phase = "select" if self.slot > 0 else "scores"
        self.kept = []
        self.task_images = ReservoirBuffer(self.inference_images, seed=self.slot)
        self._enter(phase)

    def on_task_end(self, ctx, task):
        """The slot's features are final now (its weights are never trained again): fit its Gaussian."""
        if self._described(self.slot):
            self.gaussians[self.slot] = self._gaussian(ctx, self.slot)

    def _fit_gaussian(self, ctx, slot: int) -> FeatureGaussian:
        return FeatureGaussian.fit(self._features(ctx, self.task_images.images[: len(self.task_images)], slot))

    def _enter(self, phase: str) -> None:
        self.phase, self.steps_in_phase = phase, 0
        self._apply_phase()
        self.ctx.rebuild_optimizer()

    def _apply_phase(self) -> None:
        """Which encoder tensors learn in this phase (the heads always do). The weights phase's
        region is set here, not at the next batch: a data-parallel rank without rows must reset
        the same weights after the optimizer step as the ranks that have them."""
        use_slot(self.ctx.objective, self.slot)
        for layer in masked_layers(self.ctx.encoder):
            layer.weight.requires_grad_(self.phase == "weights")
            layer.restrict_learning(None)
            for i, scores in enumerate(layer.scores):
                scores.requires_grad_(self.phase == "scores" and i == self.slot)
        if self.phase == "weights":
            self._restrict_to_free_weights()

    def _restrict_to_free_weights(self) -> None:
        """Phase 2 region: this slot's mask minus every other trained slot's mask."""
        others = [s for s in self.slots.values() if s != self.slot]
        with torch.no_grad():
            for layer in masked_layers(self.ctx.encoder):
                region = layer.mask(self.slot).bool()
                for s in others:
                    region &= ~layer.mask(s).bool()
                layer.restrict_learning(region)

    # Steps -------------------------------------------------------------------------------------
    def before_step(self, ctx, batch):
        use_slot(ctx.objective, self.slot)  # evaluation may have switched slots
        return batch

    def after_step(self, ctx, batch, out):
        self.steps_in_phase += 1
        n = batch.n_stream
        if self.phase != "fixed":
            self.task_images.add(batch.images[:n], batch.labels[:n], batch.tasks[:n])
        if self.phase == "weights":
            for layer in masked_layers(ctx.encoder):
                layer.reset_outside_region()
        elif self.phase == "select":
            self.kept.append((batch.images[:n].cpu(), batch.labels[:n].cpu()))
            if len(self.kept) >= self.select_batches:
                self.select(ctx)
                self._enter("scores")
        elif self.phase == "scores" and self.steps_in_phase >= self.score_steps:
            self._enter("weights")

    # KKT ---------------------------------------------------------------------------------------
    def select(self, ctx) -> int:
        """Copies the best-fitting earlier slot's scores into the current slot; returns that slot."""
        images = torch.cat([i for i, _ in self.kept])
        labels = torch.cat([lab for _, lab in self.kept])
        candidates = sorted(s for s in self.slots.values() if s != self.slot)
        if not len(images):   # a data-parallel rank that had no rows: rank 0's choice is broadcast anyway
            return self._transfer(ctx, candidates[-1], candidates, [], "newest")
        labelled = labels >= 0
        by_knn = 2 * int(labelled.sum()) >= len(labels) and int(labelled.sum()) > 2
        if by_knn:
            fits = [knn_loo_accuracy(self._features(ctx, images[labelled], s), labels[labelled], self.knn_k)
                    for s in candidates]
            best = candidates[max(range(len(fits)), key=fits.__getitem__)]
        else:
            rule, fits = self.unlabelled_fits(ctx, images, candidates)
            best = candidates[min(range(len(fits)), key=fits.__getitem__)]
        return self._transfer(ctx, best, candidates, fits, "knn" if by_knn else rule)

    def _transfer(self, ctx, best: int, candidates: list[int], fits: list[float], rule: str) -> int:
        with torch.no_grad():
            for layer in masked_layers(ctx.encoder):
                layer.scores[self.slot].copy_(layer.scores[best])
        self.history.append({"task": ctx.task, "candidates": candidates, "fits": fits, "chosen": best, "by": rule})
        self.kept = []
        return best

    def _features(self, ctx, images: torch.Tensor, slot: int) -> torch.Tensor:
        use_slot(ctx.objective, slot)
        try:
            return ctx.embed(images)
        finally:
            use_slot(ctx.objective, self.slot)

    @torch.no_grad()
    def ssl_losses(self, ctx, images: torch.Tensor, slots: list[int]) -> list[float]:
        """Eval-mode SSL loss of each slot on the same two views of ``images`` (no state changes)."""
        objective = ctx.objective
        was_training = objective.training
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            views = ctx.views_of(images.to(ctx.device))
        objective.eval()
        losses = []
        for s in slots:
            use_slot(objective, s)
            with ctx.autocast():
                losses.append(float(objective(*views).loss))
        use_slot(objective, self.slot)
        objective.train(was_training)
        return losses

    # Inference ---------------------------------------------------------------------------------
    def use_task(self, ctx, task: int) -> None:
        """Evaluate with ``task``'s own mask and BN statistics (the next training step switches back)."""
        use_slot(ctx.objective, self.slots[task])

    def infer_task(self, ctx, images: torch.Tensor) -> int:
        """The known task ``images`` most likely come from (no task header); see the module docstring."""
        tasks = [t for t, slot in sorted(self.slots.items()) if self.infer_by == "ssl_loss" or self._described(slot)]
        if not tasks:                # the first task before its first step
            return ctx.task
        _, fits = self.unlabelled_fits(ctx, images, [self.slots[t] for t in tasks])
        return tasks[min(range(len(tasks)), key=fits.__getitem__)]

    def unlabelled_fits(self, ctx, images: torch.Tensor, slots: list[int]) -> tuple[str, list[float]]:
        """The rule used and each slot's misfit to ``images`` (lower = better) without labels."""
        if self.infer_by == "features" and all(self._described(s) for s in slots):
            return "features", [self._gaussian(ctx, s).score(self._features(ctx, images, s)) for s in slots]
        return "ssl", self.ssl_losses(ctx, images, slots)

    def _described(self, slot: int) -> bool:
        """Whether the slot's task has a Gaussian, or (the task in training) images to fit one on."""
        return slot in self.gaussians or (slot == self.slot and self.phase != "fixed" and len(self.task_images) >= 2)

    def _gaussian(self, ctx, slot: int) -> FeatureGaussian:
        return self.gaussians[slot] if slot in self.gaussians else self._fit_gaussian(ctx, slot)

    # State -------------------------------------------------------------------------------------
    def state_dict(self):
        return {"slots": dict(self.slots), "slot": self.slot, "phase": self.phase,
                "steps_in_phase": self.steps_in_phase, "num_slots": num_slots(self.ctx.encoder),
                "kept_images": [i for i, _ in self.kept], "kept_labels": [lab for _, lab in self.kept],
                "history": self.history, "task_images": self.task_images.to_arrow(),
                "gaussians": {slot: g.state_dict() for slot, g in self.gaussians.items()}}

    def load_state_dict(self, state):
        if not state:
            return
        encoder = self.ctx.encoder
        while num_slots(encoder) < state["num_slots"]:
            add_slot(encoder)
        self._rebuild_target()
        self.slots, self.slot = dict(state["slots"]), state["slot"]
        self.phase, self.steps_in_phase = state["phase"], state["steps_in_phase"]
        self.kept = list(zip(state["kept_images"], state["kept_labels"]))
        self.history = state["history"]
        self.task_images = ReservoirBuffer.from_arrow(state["task_images"])
        self.gaussians = {slot: FeatureGaussian.from_state_dict(g) for slot, g in state["gaussians"].items()}
        self._apply_phase()
        self.ctx.rebuild_optimizer()

    def after_restore(self, ctx):
        """The learner's restore re-applied its frozen prefix, marking every tensor trainable."""
        self._apply_phase()

    def metrics(self):
        layers = masked_layers(self.ctx.encoder)
        used = total = 0
        with torch.no_grad():
            for layer in layers:
                union = torch.zeros_like(layer.weight, dtype=torch.bool)
                for s in self.slots.values():
                    union |= layer.mask(s).bool()
                used, total = used + int(union.sum()), total + union.numel()
        return {"exssnet_tasks": float(len(self.slots)), "exssnet_phase": float(PHASES.index(self.phase)),
                "exssnet_used_weight_ratio": used / max(total, 1)}
