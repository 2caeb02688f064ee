"""SSL losses as pure functions of embeddings (paper defaults in the signatures)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam/BYOL: -cos(p, sg(z)); BYOL's 2-2cos differs by a constant only."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's symmetric contrastive loss: each view's positive is the other view of its image."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v3: queries against keys of the same batch; scaled by 2T as in the paper."""
    q, k = F.normalize(q, dim=-1), F.normalize(k.detach(), dim=-1)
    logits = q @ k.T / temperature
    targets = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, targets) * (2 * temperature)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, scale: float = 0.1) -> torch.Tensor:
    """Cross-correlation of standardized embeddings pushed to the identity. Standardized as the paper's
    BatchNorm1d(affine=False) does (biased variance, eps inside the root), so that the diagonal of the
    correlation of a view with itself is exactly 1."""
    n = z1.shape[0]
    z1, z2 = (F.batch_norm(z, None, None, training=True, eps=1e-5) for z in (z1, z2))
    c = z1.T @ z2 / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = (c - torch.diag_embed(torch.diagonal(c))).pow(2).sum()
    return scale * (on_diag + lambd * off_diag)


def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim_w: float = 25.0, var_w: float = 25.0, cov_w: float = 1.0) -> torch.Tensor:
    """Invariance (MSE) + variance hinge + covariance decorrelation."""
    inv = F.mse_loss(z1, z2)
    var = sum(F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean() for z in (z1, z2)) / 2   # the mean of the views' hinges
    cov = 0.0
    n, d = z1.shape
    for z in (z1, z2):
        zc = z - z.mean(0)
        c = zc.T @ zc / (n - 1)
        cov = cov + (c.pow(2).sum() - torch.diagonal(c).pow(2).sum()) / d
    return sim_w * inv + var_w * var + cov_w * cov
