"""CaSSLe and Kaizen: frozen teachers get no gradient, distillation is exact, labels are optional."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_fixtures import assert_same_next_step, images, one_torch_thread, tiny_learner, train  # noqa: F401
from streamd.models.objectives import OBJECTIVES

CASSLE = {"predictor_hidden": 32}
KAIZEN = {"predictor_hidden": 32, "memory_share": 0.1}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def forward_batch(learner, labels=None, seed: int = 7):
    """A batch with views and the objective's output, outside ``learner.step`` (to inspect terms)."""
    batch = learner.make_batch(images(seed=seed), labels)
    batch.views = learner.views_of(batch.images)
    return batch, learner.objective(*batch.views)


def record_frozen_rows(plugin) -> list[int]:
    """Rows the frozen teacher sees at each call (spies on ``frozen_forward``)."""
    rows, original = [], plugin.frozen_forward

    def spy(views):
        rows.append(views[0].shape[0] + views[1].shape[0])
        return original(views)
    plugin.frozen_forward = spy
    return rows


def test_cassle_trains_against_a_frozen_copy_that_never_changes():
    learner = tiny_learner("cassle", cassle=CASSLE)
    plugin = learner.plugin("cassle")
    train(learner, 0, 2)
    assert plugin.frozen is None
    learner.begin_task(1)
    frozen = snapshot(plugin.frozen)
    for k, v in learner.objective.encoder.state_dict().items():
        assert torch.equal(frozen[f"encoder.{k}"], v), "the copy is the model at the task boundary"
    encoder_before = snapshot(learner.encoder)

    for i in range(2):
        result = learner.step(images(seed=50 + i))
        assert "cassle" in result.terms and math.isfinite(result.terms["cassle"])

    assert any(not torch.equal(v, encoder_before[k]) for k, v in learner.encoder.state_dict().items())
    assert all(torch.equal(v, frozen[k]) for k, v in plugin.frozen.state_dict().items())
    assert not plugin.frozen.training
    assert all(p.grad is None and not p.requires_grad for p in plugin.frozen.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in plugin.predictor.parameters())


def test_cassle_gradient_reaches_the_current_encoder_only():
    learner = tiny_learner("cassle", cassle=CASSLE)
    plugin = learner.plugin("cassle")
    train(learner, 0, 2)
    learner.begin_task(1)
    batch, out = forward_batch(learner)
    plugin.extra_loss(learner.context, batch, out)["cassle"].backward()
    assert all(p.grad is None for p in plugin.frozen.parameters())
    assert sum(float(p.grad.abs().sum()) for p in learner.encoder.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("objective, minimum", [("byol", 0.0), ("simsiam", -1.0)])
def test_cassle_loss_is_at_its_minimum_when_current_equals_previous(objective, minimum):
    """Through an identity predictor, unchanged features give the cosine loss's minimum:
    0 for BYOL's 2 - 2cos, -1 for SimSiam's -cos (its distill_loss has no +1 offset)."""
    learner = tiny_learner("cassle", objective=objective, cassle=CASSLE)
    plugin = learner.plugin("cassle")
    train(learner, 0, 2)
    learner.begin_task(1)
    plugin.predictor = nn.Identity()
    learner.objective.eval()  # the frozen copy runs in eval mode; so must the current model here
    batch, out = forward_batch(learner)
    assert abs(plugin.extra_loss(learner.context, batch, out)["cassle"].item() - minimum) < 1e-5

    with torch.no_grad():
        for p in learner.encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch, out = forward_batch(learner)
    assert plugin.extra_loss(learner.context, batch, out)["cassle"].item() > minimum + 1e-3


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_cassle_works_with_every_objective(objective):
    learner = tiny_learner("cassle", objective=objective, cassle=CASSLE)
    plugin = learner.plugin("cassle")
    train(learner, 0, 1)
    learner.begin_task(1)
    frozen = snapshot(plugin.frozen)
    result = learner.step(images(seed=5))
    assert not result.skipped and math.isfinite(result.loss) and math.isfinite(result.terms["cassle"])
    assert all(torch.equal(v, frozen[k]) for k, v in plugin.frozen.state_dict().items())


def test_cassle_distils_the_replayed_rows_too():
    learner = tiny_learner("cassle+replay", cassle=CASSLE, replay={"replay_ratio": 0.5})
    train(learner, 0, 2)
    learner.begin_task(1)
    rows = record_frozen_rows(learner.plugin("cassle"))
    result = learner.step(images(seed=5))
    assert "cassle" in result.terms and math.isfinite(result.terms["cassle"])
    assert rows == [2 * (16 + 8)]  # both views of 16 stream + 8 replayed rows


def test_kaizen_cross_entropy_ignores_unlabelled_rows():
    learner = tiny_learner("kaizen", kaizen=KAIZEN)
    plugin = learner.plugin("kaizen")
    labels = torch.tensor([3, -1, 5, -1, -1, 7, 0, -1, 9, -1, -1, -1, 2, -1, 4, -1])
    batch, out = forward_batch(learner, labels)
    ce = plugin.extra_loss(learner.context, batch, out)["kaizen_ce"]

    unlabelled = (labels == -1).repeat(2)
    feats = torch.cat(out.feats).detach().clone()
    feats[unlabelled] = 100 * torch.randn_like(feats[unlabelled])
    scrambled = dataclasses.replace(out, feats=feats.chunk(2))
    assert torch.equal(plugin.extra_loss(learner.context, batch, scrambled)["kaizen_ce"], ce)

    labelled = ~unlabelled
    expected = F.cross_entropy(plugin.classifier(feats[labelled]), labels.repeat(2)[labelled])
    assert torch.allclose(ce, expected, atol=1e-6)


def test_kaizen_without_any_label_gives_exactly_zero_cross_entropy():
    learner = tiny_learner("kaizen", kaizen=KAIZEN)
    plugin = learner.plugin("kaizen")
    none = torch.full((16,), -1)
    batch, out = forward_batch(learner, none)
    assert plugin.extra_loss(learner.context, batch, out)["kaizen_ce"].item() == 0.0
    result = learner.step(images(seed=3), none)
    assert not result.skipped and result.terms["kaizen_ce"] == 0.0 and math.isfinite(result.loss)


def test_kaizen_distils_the_classifier_and_replays_earlier_tasks_after_a_boundary():
    learner = tiny_learner("kaizen", kaizen=KAIZEN)
    plugin = learner.plugin("kaizen")
    labels = torch.arange(16) % 10
    labels[::2] = -1
    train(learner, 0, 3, labels)
    before = learner.step(images(seed=40), labels)
    assert "kaizen_classifier_distill" not in before.terms and "cassle" not in before.terms
    assert len(plugin.memory.buffer) == 0, "no earlier task yet: nothing to replay"

    learner.begin_task(1)
    assert len(plugin.memory.buffer) == math.ceil(0.1 * 64)  # 10% of the 64 rows task 0 streamed
    assert set(plugin.memory.buffer.tasks[: len(plugin.memory.buffer)].tolist()) == {0}
    frozen_classifier = snapshot(plugin.frozen["classifier"])
    assert all(torch.equal(frozen_classifier[k], v) for k, v in plugin.classifier.state_dict().items())

    rows = record_frozen_rows(plugin)
    after = learner.step(images(seed=41), labels)
    assert after.terms["kaizen_classifier_distill"] > 0 and after.terms["cassle"] != 0
    assert rows == [2 * (16 + 4)]  # replay_ratio 0.25 of 16 stream rows
    assert all(torch.equal(frozen_classifier[k], v) for k, v in plugin.frozen["classifier"].state_dict().items())

    batch, out = forward_batch(learner, labels)
    distill = plugin.extra_loss(learner.context, batch, out)["kaizen_classifier_distill"]
    grads = torch.autograd.grad(distill, list(learner.encoder.parameters()), allow_unused=True)
    assert all(g is None for g in grads), "the classifier sees detached features only"


@pytest.mark.parametrize("strategy", ["cassle", "cassle+replay", "kaizen"])
def test_distillation_state_survives_a_checkpoint(strategy, tmp_path):
    options = {name: value for name, value in {"cassle": CASSLE, "kaizen": KAIZEN}.items() if name in strategy}
    labels = torch.arange(16) % 10
    labels[1::3] = -1
    learner = tiny_learner(strategy, **options)
    train(learner, 0, 2, labels)
    learner.begin_task(1)
    learner.step(images(seed=20), labels)
    fresh = tiny_learner(strategy, seed=1, **options)
    assert fresh.plugins[0].frozen is None
    assert_same_next_step(learner, fresh, tmp_path, labels)  # also compares the frozen copies and memories
