"""Linear CKA (Kornblith et al. 2019): how similar two sets of features of the same inputs are.

Used to decide which encoder blocks to freeze and to measure representation drift. It works in
sample space (N x N Gram matrices), so conv feature maps with 10^5 values per image cost no more
than their sample count; the Grams are accumulated in float64 over chunks of feature columns, so
no float64 copy of a large feature map is ever made.
"""
from __future__ import annotations

import torch


def centered_gram(x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The (N, N) float64 Gram matrix of mean-centred features; ``x`` is (N, ...) and is flattened."""
    x = x.reshape(x.shape[0], -1)
    n = x.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for cols in x.split(chunk, dim=1):
        c = cols.double()
        c = c - c.mean(0, keepdim=True)
        gram += c @ c.T
    return gram


def _hsic(k: torch.Tensor, l: torch.Tensor, debiased: bool) -> torch.Tensor:
    """HSIC of two centred Grams (up to a common factor that cancels in CKA)."""
    if not debiased:
        return (k * l).sum()
    # Unbiased estimator (Song et al. 2012) on Grams with zeroed diagonals; needs n > 3.
    n = k.shape[0]
    k, l = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    ones_k, ones_l = k.sum(0), l.sum(0)
    return ((k * l).sum() + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2))
            - 2 * (ones_k @ ones_l) / (n - 2)) / (n * (n - 3))


def cka_from_grams(k: torch.Tensor, l: torch.Tensor, debiased: bool = False) -> torch.Tensor:
    """CKA of two centred Grams of the same N samples (float64 scalar, 1 = same up to rotation and scale)."""
    denom = torch.sqrt(_hsic(k, k, debiased) * _hsic(l, l, debiased))
    return _hsic(k, l, debiased) / denom.clamp_min(torch.finfo(torch.float64).tiny)


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> torch.Tensor:
    """Linear CKA between features ``x`` (N, ...) and ``y`` (N, ...) of the same N inputs.

    Invariant to orthogonal transforms and isotropic scaling of either side. The plain (biased)
    estimator drifts towards 1 when the feature dimension far exceeds N even for unrelated
    features; ``debiased=True`` removes that bias (values near 0 for independent features).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]}")
    return cka_from_grams(centered_gram(x), centered_gram(y), debiased)
