"""Helpers shared by the snapshot, client, API and probe tests: a tiny learner whose encoder has
non-trivial weights and BN statistics (so equal outputs mean equal weights), and images."""
from __future__ import annotations

import torch

from streamd.learning.learner import build_learner

TINY_OBJECTIVE = {"proj_hidden": 128, "proj_dim": 64, "pred_hidden": 32}


def tiny_learner(arch: str = "resnet_tiny", image_size: int = 16, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    learner = build_learner(arch, image_size, objective_kwargs=TINY_OBJECTIVE, device="cpu", **kwargs)
    perturb(learner)
    return learner


@torch.no_grad()
def perturb(learner) -> None:
    """Moves every weight and BN running statistic, as training would, without paying for steps."""
    for name, t in learner.encoder.state_dict().items():
        if t.is_floating_point():
            t.add_(0.05 * torch.randn_like(t).abs() if "running_var" in name else 0.05 * torch.randn_like(t))


def images(n: int = 8, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@torch.no_grad()
def encoder_output(learner, imgs: torch.Tensor) -> torch.Tensor:
    learner.encoder.eval()
    return learner.encoder(learner.preprocess(imgs))
