"""Label-free signs that a representation has collapsed.

Both work on any batch of features, so unlabelled streams get them too:

- ``std_ratio``: the per-dimension standard deviation of L2-normalised features, averaged and
  scaled by sqrt(d) (the SimSiam paper's collapse monitor, made independent of d). Zero-mean
  features spread over the sphere give about 1; a ResNet's features are non-negative (after ReLU),
  which lowers it: measured on digits, about 0.13 untrained and 0.5 after some SimSiam steps,
  and about 0.02 once a destructive learning rate collapsed the encoder.
- ``effective_rank``: exp of the entropy of the normalised singular values of the centred features
  (Roy and Vetterli, 2007): from 1 (everything on one line) to min(n, d).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_ROWS = 4


def representation_health(features: torch.Tensor) -> dict[str, float] | None:
    """``{"std_ratio", "effective_rank"}`` of (N, D) features; None with fewer than 4 rows."""
    if features.shape[0] < MIN_ROWS:
        return None
    z = F.normalize(features.float(), dim=1)
    std_ratio = float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))
    singular = torch.linalg.svdvals(z - z.mean(dim=0))
    if float(singular.sum()) <= 1e-12:   # every row identical: one point, rank 1 by convention
        return {"std_ratio": std_ratio, "effective_rank": 1.0}
    p = singular / singular.sum()
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"std_ratio": std_ratio, "effective_rank": float(torch.exp(entropy))}
