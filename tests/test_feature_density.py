"""FeatureGaussian: scores of different feature spaces are comparable, and out-of-distribution is higher."""
from __future__ import annotations

import torch

from streamd.learning.feature_density import FeatureGaussian


def features(n: int, d: int, seed: int, scale: float) -> torch.Tensor:
    """Anisotropic Gaussian features around a random direction (what an SSL embedding of one task looks like)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(d, generator=g) * 3
    mixing = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d) * scale
    return centre + torch.randn(n, d, generator=g) @ mixing


def test_held_out_data_scores_about_the_same_in_any_space_and_far_higher_out_of_it():
    a, b = features(800, 32, 0, 1.0), features(800, 32, 1, 5.0)      # spaces of very different spread
    model_a, model_b = FeatureGaussian.fit(a[:400]), FeatureGaussian.fit(b[:400])
    own_a, own_b = model_a.score(a[400:]), model_b.score(b[400:])
    assert 0.5 < own_a < 2 and 0.5 < own_b < 2, (own_a, own_b)
    assert model_a.score(b[400:]) > 10 * own_a and model_b.score(a[400:]) > 10 * own_b


def test_state_round_trip_scores_identically():
    a = features(100, 8, 2, 1.0)
    model = FeatureGaussian.fit(a)
    again = FeatureGaussian.from_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert again.score(a[:10]) == model.score(a[:10])
