"""Our SSL losses against lightly's implementations of the same papers: same inputs, same value.

MoCo v3's in-batch InfoNCE has no lightly counterpart with the same contract, so it is not here."""
from __future__ import annotations

import pytest
import torch
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss

from streamd.models.objectives.losses import barlow_twins, negative_cosine, nt_xent, vicreg


@pytest.fixture(params=[0, 1, 2])
def views(request):
    g = torch.Generator().manual_seed(request.param)
    z1 = torch.randn(32, 16, generator=g) * 2 + 0.5
    return z1, z1 + 0.3 * torch.randn(32, 16, generator=g)


def test_vicreg_matches_lightly(views):
    """The variance term is the mean of the two views' hinges (it used to be their sum)."""
    z1, z2 = views
    expected = VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4)(z1, z2)
    assert torch.allclose(vicreg(z1, z2), expected, rtol=1e-5)


def test_nt_xent_matches_lightly(views):
    z1, z2 = views
    assert torch.allclose(nt_xent(z1, z2, temperature=0.2), NTXentLoss(temperature=0.2)(z1, z2), rtol=1e-5)


def test_negative_cosine_matches_lightly(views):
    p, z = views
    assert torch.allclose(negative_cosine(p, z), NegativeCosineSimilarity()(p, z), rtol=1e-6)


def test_barlow_twins_matches_lightly_up_to_our_scale(views):
    """Standardized with the biased variance, as BatchNorm1d does (it used the unbiased std)."""
    z1, z2 = views
    expected = BarlowTwinsLoss(lambda_param=0.0051, gather_distributed=False)(z1, z2)
    assert torch.allclose(barlow_twins(z1, z2, lambd=0.0051, scale=1.0), expected, rtol=1e-5)
