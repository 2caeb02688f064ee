"""Parameter regularization (as in Hu et al., ICLR 2022): MAS and EWC for self-supervised streams.

During a task a bounded uniform sample of its stream images (uint8 reservoir) is kept. At the
task end each encoder parameter gets an importance from that sample; Omega is the running
AVERAGE of the per-task importances (every finished task weighs the same and Omega's scale does
not grow with the number of tasks), and theta* becomes the parameters at that task end. Every
later step adds ``strength/2 * sum(Omega * (theta - theta*)^2)``.

With ``normalize`` (default) each task's importance is divided by its maximum, so Omega lies in
[0, 1]: raw importances differ by orders of magnitude between objectives and architectures
(resnet_tiny, 16 px: mean MAS ~1e-3, mean EWC ~1e-7 for SimSiam, ~1e-6 for BYOL) and squared
gradients are very peaked, so a mean-normalized Omega made SGD on the penalty diverge
(lr * strength * max Omega > 2). Bounded by 1, plain SGD on the penalty stays stable while
lr * strength < 2 (the default strength 10 with the default lr 0.05 gives 0.5).

- MAS: mean absolute gradient of the L2 norm of the encoder features (eval mode, no
  augmentation, no labels needed).
- EWC: an empirical Fisher of the SSL objective itself, since a stream has no labels: the mean
  over mini-batches of the squared mini-batch gradient of the SSL loss on two augmented views.
  (Per-sample squared gradients are ill-defined for batch-level contrastive losses.)
Importances are computed with the model in eval mode so BN running statistics stay untouched.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from streamd.learning.plugins.base import Plugin, PluginOptions, register
from streamd.learning.replay_buffer import ReservoirBuffer


class RegularizerOptions(PluginOptions):
    strength: float = Field(10.0, ge=0, description="weight of the importance-weighted pull to the anchor")
    normalize: bool = Field(True, description="scale importances to a maximum of 1 per task")
    sample_size: int = Field(256, ge=1, description="stream images kept to score importances at a task end")
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class ImportanceRegularizer(Plugin):
    """Everything MAS and EWC share; subclasses only say how one mini-batch scores parameters."""

    def __init__(self, strength: float, normalize: bool, sample_size: int, batch_size: int, seed: int):
        self.strength, self.normalize = strength, normalize
        self.sample_size, self.batch_size, self.seed = sample_size, batch_size, seed
        self.sample = ReservoirBuffer(sample_size, "none", seed)
        self.omega: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.tasks_accumulated = 0

    def setup(self, ctx):
        self.encoder = ctx.encoder
        self.device = ctx.device

    def batch_grads(self, ctx, images: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
        """Per-parameter importance of one mini-batch of uint8 images."""
        raise NotImplementedError

    def importance(self, ctx, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean over mini-batches of ``batch_grads`` for every trainable encoder parameter (max 1 with normalize)."""
        named = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for _, p in named]
        chunks = images.split(self.batch_size)
        was_training = ctx.objective.training
        ctx.objective.eval()
        try:
            for chunk in chunks:
                grads = self.batch_grads(ctx, chunk.to(self.device), [p for _, p in named])
                for t, g in zip(total, grads):
                    t.add_(g)
        finally:
            ctx.objective.train(was_training)
        scale = len(chunks)
        if self.normalize:
            peak = max(float(t.max()) for t in total)
            scale = peak if peak > 0 else 1.0
        return {n: t / scale for (n, _), t in zip(named, total)}

    def after_step(self, ctx, batch, out):
        n = batch.n_stream
        self.sample.add(batch.images[:n], batch.labels[:n], batch.tasks[:n])

    def on_task_end(self, ctx, task):
        if len(self.sample):
            new = self.importance(ctx, self.sample.images[: len(self.sample)])
            self.tasks_accumulated += 1
            for name, value in new.items():
                old = self.omega.get(name, torch.zeros_like(value))
                self.omega[name] = old + (value - old) / self.tasks_accumulated
            self.anchor = {n: p.detach().clone() for n, p in self.encoder.named_parameters()}
        self.sample = ReservoirBuffer(self.sample_size, "none", self.seed + task + 1)

    def penalty(self) -> torch.Tensor:
        params = dict(self.encoder.named_parameters())
        return self.strength / 2 * sum((om * (params[n] - self.anchor[n]).pow(2)).sum() for n, om in self.omega.items())

    def extra_loss(self, ctx, batch, out):
        return {self.name: self.penalty()} if self.omega else {}

    def state_dict(self):
        return {"omega": self.omega, "anchor": self.anchor, "tasks_accumulated": self.tasks_accumulated,
                "sample": self.sample.to_arrow()}

    def load_state_dict(self, state):
        if "omega" not in state:
            return
        self.omega = {n: t.to(self.device) for n, t in state["omega"].items()}
        self.anchor = {n: t.to(self.device) for n, t in state["anchor"].items()}
        self.tasks_accumulated = state["tasks_accumulated"]
        self.sample = ReservoirBuffer.from_arrow(state["sample"])

    def metrics(self):
        return {f"{self.name}_tasks_accumulated": float(self.tasks_accumulated)}


def _grads(loss: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Gradients without touching ``.grad`` (the optimizer's buffers); unused params give zeros."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


@register("mas", RegularizerOptions)
class MASPlugin(ImportanceRegularizer):
    """Memory Aware Synapses (Aljundi et al. 2018): how much the embedding moves per parameter."""

    def batch_grads(self, ctx, images, params):
        with ctx.autocast():
            feats = self.encoder(ctx.preprocess(images))
        return [g.abs() for g in _grads(feats.float().norm(dim=1).mean(), params)]


@register("ewc", RegularizerOptions)
class EWCPlugin(ImportanceRegularizer):
    """Elastic Weight Consolidation (Kirkpatrick et al. 2017) with the SSL loss in place of the likelihood."""

    def batch_grads(self, ctx, images, params):
        with ctx.autocast():
            loss = ctx.objective(*ctx.views_of(images)).loss
        return [g.pow(2) for g in _grads(loss.float(), params)]
