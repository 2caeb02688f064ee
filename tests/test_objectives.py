"""Every registered SSL objective can learn: its loss falls when it overfits one tiny fixed batch."""
from __future__ import annotations

import pytest
import torch

from streamd.models.encoders import EncoderSpec, build_encoder
from streamd.models.objectives import OBJECTIVES, build_objective
from cl_fixtures import IMAGE_SIZE, objective_kwargs


def fixed_views(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy copies of the same random images: the objective must pull them together."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((n, 3, IMAGE_SIZE, IMAGE_SIZE), generator=gen)
    return x + 0.3 * torch.randn(x.shape, generator=gen), x + 0.3 * torch.randn(x.shape, generator=gen)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_loss_falls_when_overfitting_a_tiny_batch(name):
    torch.manual_seed(0)
    objective = build_objective(name, build_encoder(EncoderSpec("resnet_tiny", IMAGE_SIZE)), **objective_kwargs(name))
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-3)
    v1, v2 = fixed_views()
    losses = []
    for _ in range(20):
        loss = objective(v1, v2).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        objective.after_optimizer_step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1 * max(abs(first), 0.1), (name, losses)
