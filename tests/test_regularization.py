"""MAS and EWC: importances from the task's own sample, a penalty that is zero at theta* and pulls back."""
from __future__ import annotations

import pytest
import torch

from cl_fixtures import assert_same_next_step, images, one_torch_thread, tiny_learner, train  # noqa: F401

METHODS = ["mas", "ewc"]


def weighted_distance(plugin) -> float:
    params = dict(plugin.encoder.named_parameters())
    with torch.no_grad():
        return sum(float((om * (params[n] - plugin.anchor[n]).pow(2)).sum()) for n, om in plugin.omega.items())


@pytest.mark.parametrize("method", METHODS)
def test_penalty_is_zero_at_theta_star_and_pulls_perturbed_weights_back(method):
    learner = tiny_learner(method)
    plugin = learner.plugin(method)
    train(learner, 0, 2)
    assert learner.step(images(seed=1)).terms.keys() == {"ssl"}, "no penalty before a task has ended"
    learner.begin_task(1)
    omega = torch.cat([o.flatten() for o in plugin.omega.values()])
    assert omega.min() >= 0 and omega.max() == 1.0 and (omega > 0).sum() > omega.numel() // 2
    assert plugin.penalty().item() == 0.0
    assert learner.step(images(seed=2)).terms[method] == 0.0

    torch.manual_seed(3)
    with torch.no_grad():
        for p in learner.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    start = {n: (p - plugin.anchor[n]).detach().abs() for n, p in learner.encoder.named_parameters()}
    d0 = weighted_distance(plugin)
    opt = torch.optim.SGD(learner.encoder.parameters(), lr=0.05)  # lr * strength * max(Omega) = 0.5
    for _ in range(20):
        opt.zero_grad()
        plugin.penalty().backward()
        opt.step()

    assert weighted_distance(plugin) < 0.9 * d0
    for n, p in learner.encoder.named_parameters():
        now = (p - plugin.anchor[n]).detach().abs()
        assert (now <= start[n] + 1e-9).all(), f"{n} moved away from theta*"
        most_important = plugin.omega[n] == 1.0
        assert (now[most_important] < 1e-4 * start[n][most_important] + 1e-9).all(), n


@pytest.mark.parametrize("method", METHODS)
def test_importances_accumulate_across_tasks(method):
    learner = tiny_learner(method)
    plugin = learner.plugin(method)
    train(learner, 0, 2)
    state_at_boundary = {k: v.clone() for k, v in learner.objective.state_dict().items()}
    learner.begin_task(1)
    assert all(torch.equal(v, state_at_boundary[k]) for k, v in learner.objective.state_dict().items()), \
        "computing importances must not touch weights or BN statistics"
    first = {n: o.clone() for n, o in plugin.omega.items()}
    train(learner, 1, 2, seed=7)

    rng = torch.get_rng_state()  # EWC draws augmentations: replay the same draws at the task end
    second = plugin.importance(learner, plugin.sample.images[: len(plugin.sample)])
    torch.set_rng_state(rng)
    learner.begin_task(2)

    assert plugin.tasks_accumulated == 2
    for n, o in plugin.omega.items():
        assert torch.allclose(o, (first[n] + second[n]) / 2, atol=1e-7), n
    assert any(not torch.equal(first[n], second[n]) for n in first)
    assert all(torch.equal(plugin.anchor[n], p) for n, p in learner.encoder.named_parameters())


def test_mas_importance_is_the_gradient_magnitude_of_the_embedding_norm():
    learner = tiny_learner("mas", mas={"normalize": False})
    plugin = learner.plugin("mas")
    x = images(n=8, seed=4)
    omega = plugin.importance(learner, x)
    learner.objective.eval()
    norm = learner.encoder(learner.preprocess(x)).norm(dim=1).mean()
    for (n, p), g in zip(learner.encoder.named_parameters(), torch.autograd.grad(norm, list(learner.encoder.parameters()))):
        assert torch.allclose(omega[n], g.abs(), atol=1e-7), n


@pytest.mark.parametrize("method", METHODS)
def test_the_task_sample_is_bounded_uint8(method):
    learner = tiny_learner(method, **{method: {"sample_size": 20}})
    plugin = learner.plugin(method)
    train(learner, 0, 3)
    assert len(plugin.sample) == 20 and plugin.sample.seen == 48
    assert plugin.sample.images.dtype == torch.uint8 and plugin.sample.images.shape[0] == 20


@pytest.mark.parametrize("method", METHODS)
def test_regularization_state_survives_a_checkpoint(method, tmp_path):
    learner = tiny_learner(method)
    train(learner, 0, 2)
    learner.begin_task(1)
    learner.step(images(seed=20))
    fresh = tiny_learner(method, seed=1)
    assert_same_next_step(learner, fresh, tmp_path)  # also compares omega, anchor and sample after a task end
    assert fresh.plugin(method).tasks_accumulated == 2
