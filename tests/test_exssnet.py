"""ExSSNeT: supermask layers, protected earlier tasks, KKT selection, persistence."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import ResNet

from streamd.models.supermask import MaskedConv2d, MaskedLinear, MultitaskBatchNorm2d, masked_layers, to_supermask
from streamd.service.checkpoint import load_checkpoint, save_checkpoint
from streamd.client import load_encoder
from streamd.learning.data import task_stream, train_test
from streamd.learning.learner import build_learner
from streamd.service.snapshots import SnapshotPublisher

TINY = {"arch": "resnet_tiny", "image_size": 16, "objective": "simsiam",
        "objective_kwargs": {"proj_hidden": 128, "proj_dim": 64, "pred_hidden": 32}}


def make_learner(**options):
    torch.manual_seed(0)
    options = {"score_steps": 1, "select_batches": 1, **options}
    return build_learner(**TINY, strategy="exssnet", plugin_options={"exssnet": options}, device="cpu")


def noise(seed: int, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


def blue_classes(seed: int, n: int = 32):
    """Class = blue level (dark / bright); the red channel is noise shared by both classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    img = torch.full((n, 3, 16, 16), 128.0)
    img[:, 0] = torch.rand(n, 16, 16, generator=g) * 255
    img[:, 2] = (40.0 + 160.0 * labels.view(n, 1, 1)) + torch.rand(n, 16, 16, generator=g) * 20
    return img.to(torch.uint8), labels


# Layers ---------------------------------------------------------------------------------------

def test_conversion_gives_masks_of_the_configured_density_and_per_task_non_affine_bn():
    learner = make_learner(density=0.2)
    enc = learner.encoder
    assert not any(type(m) is nn.Conv2d for m in enc.modules())
    norms = [m for m in enc.modules() if isinstance(m, MultitaskBatchNorm2d)]
    assert len(norms) == 12 and all(not m.affine for m in enc.modules() if isinstance(m, nn.BatchNorm2d))
    layers = masked_layers(enc)
    assert len(layers) == 12 and all(isinstance(m, MaskedConv2d) for m in layers)
    for layer in layers:
        assert abs(float(layer.mask().detach().mean()) - 0.2) <= 1 / layer.weight.numel()
    linear = to_supermask(nn.Sequential(nn.Linear(40, 30, bias=False)), density=0.1)[0]
    assert isinstance(linear, MaskedLinear) and float(linear.mask().detach().sum()) == 120
    with pytest.raises(NotImplementedError):
        to_supermask(nn.Sequential(nn.LayerNorm(4)))


def test_the_mask_passes_gradients_straight_through_to_the_scores():
    layer = to_supermask(nn.Sequential(nn.Linear(6, 5, bias=False)), density=0.5)[0]
    x = torch.randn(3, 6)
    layer(x).sum().backward()
    expected = (x.sum(0) * layer.weight.detach()) * torch.sign(layer.scores[0].detach())  # d/ds of w*m, m ~ |s|
    assert torch.allclose(layer.scores[0].grad, expected, atol=1e-6)
    assert layer.weight.grad is not None and (layer.weight.grad[layer.mask().detach() == 0] == 0).all()


# Protection of earlier tasks -----------------------------------------------------------------

def test_a_later_task_leaves_earlier_masks_weights_and_outputs_bit_identical():
    learner = make_learner()                      # SGD with momentum 0.9 and weight decay
    plugin = learner.plugin("exssnet")
    probe = noise(100, n=6)
    for s in range(3):                            # task 0: 1 step scores, 2 steps weights
        learner.step(noise(s))
    layers = masked_layers(learner.encoder)
    masks0 = [m.mask(0).bool() for m in layers]
    weights0 = [m.weight.detach().clone() for m in layers]
    state0 = {k: v.clone() for k, v in learner.encoder.state_dict().items()}
    feats0 = learner.embed(probe)

    learner.begin_task(1)
    learner.step(noise(10))                       # select (KKT copies slot 0's scores)
    assert all(torch.equal(m.scores[1], m.scores[0]) for m in layers)
    learner.step(noise(11))                       # scores phase
    assert plugin.phase == "weights"
    assert not all(torch.equal(m.scores[1], m.scores[0]) for m in layers)
    learner.step(noise(12))
    learner.step(noise(13))
    for m in layers:                              # gradient only inside mask_1 and not mask_0
        assert (m.weight.grad[~m.region] == 0).all()
    assert any(m.region.any() and (m.weight.grad[m.region] != 0).any() for m in layers)

    masks1 = [m.mask(1).bool() for m in layers]
    changed = 0
    for m, w0, k0, k1 in zip(layers, weights0, masks0, masks1):
        assert torch.equal(m.weight[k0], w0[k0])              # earlier mask: bit-identical
        assert torch.equal(m.weight[~(k0 | k1)], w0[~(k0 | k1)])  # unused weights too
        changed += int((m.weight[k1 & ~k0] != w0[k1 & ~k0]).sum())
    assert changed > 0                                        # the free part of mask_1 learned
    after = learner.encoder.state_dict()
    for key, value in state0.items():                         # slot 0's scores and BN statistics
        if ".scores.0" in key or ".norms.0." in key:
            assert torch.equal(after[key], value), key
    plugin.use_task(learner, 0)
    assert torch.equal(learner.embed(probe), feats0)
    plugin.use_task(learner, 1)
    assert not torch.equal(learner.embed(probe), feats0)


# KKT -----------------------------------------------------------------------------------------

def see_only_channel(learner, slot: int, channel: int) -> None:
    """Makes ``slot``'s first-conv mask read one input colour channel (as if its task used only it)."""
    scores = learner.encoder.net.conv1.scores[slot]
    with torch.no_grad():
        scores.copy_(torch.rand_like(scores) * 0.01)
        scores[:, channel] += 1.0


def test_kkt_copies_the_scores_of_the_earlier_task_whose_mask_fits_the_new_data():
    learner = make_learner()
    plugin = learner.plugin("exssnet")
    for task in (0, 1):
        learner.begin_task(task)
        learner.step(noise(task))
    see_only_channel(learner, slot=0, channel=0)      # red: only noise in the new task
    see_only_channel(learner, slot=1, channel=2)      # blue: what tells the new task's classes apart
    learner.begin_task(2)
    learner.step(*blue_classes(7))
    decision = plugin.history[-1]
    assert decision["by"] == "knn" and decision["candidates"] == [0, 1]
    assert decision["chosen"] == 1 and decision["fits"][1] > decision["fits"][0] + 0.2, decision
    assert all(torch.equal(m.scores[2], m.scores[1]) for m in masked_layers(learner.encoder))

    for infer_by, rule in (("features", "features"), ("ssl_loss", "ssl")):   # without labels: the infer_by rule
        unlabelled = make_learner(infer_by=infer_by)
        for task in (0, 1):
            unlabelled.begin_task(task)
            unlabelled.step(noise(task))
        unlabelled.begin_task(2)
        unlabelled.step(noise(2))
        decision = unlabelled.plugin("exssnet").history[-1]
        assert decision["by"] == rule and decision["chosen"] == min((0, 1), key=decision["fits"].__getitem__)


def test_kkt_without_labels_starts_a_recurring_distribution_from_its_earlier_mask():
    """Real digits: task 0 upright, task 1 other digits colour-inverted, task 2 held-out upright
    digits of task 0's classes under a new id: the feature Gaussians pick mask 0 (the SSL-loss
    rule picked mask 1 here, and in 2 of 3 seeds)."""
    (train0, test0), (train1, _) = [train_test(t, 0.2, 0) for t in task_stream("mnist5k", "class", 5, 16, 0)[:2]]
    learner = make_learner(score_steps=20, select_batches=2)
    gen = torch.Generator().manual_seed(0)
    for task, images in ((0, train0.images), (1, 255 - train1.images)):
        learner.begin_task(task)
        for _ in range(60):
            learner.step(images[torch.randint(0, len(images), (32,), generator=gen)])
    learner.begin_task(2)
    for chunk in test0.images[:64].split(32):
        learner.step(chunk)
    decision = learner.plugin("exssnet").history[-1]
    assert decision["by"] == "features" and decision["candidates"] == [0, 1] and decision["chosen"] == 0, decision
    assert all(torch.equal(m.scores[2], m.scores[0]) for m in masked_layers(learner.encoder))


def test_ssl_loss_task_inference_picks_the_lowest_loss_task_and_changes_no_state():
    learner = make_learner(infer_by="ssl_loss")
    plugin = learner.plugin("exssnet")
    for task in (0, 1, 2):
        learner.begin_task(task)
        learner.step(noise(task))
    before = {k: v.clone() for k, v in learner.state_dict()["objective"].items()}
    images = noise(9)
    losses = plugin.ssl_losses(learner, images, [plugin.slots[t] for t in (0, 1, 2)])
    assert plugin.infer_task(learner, images) == min((0, 1, 2), key=losses.__getitem__)
    after = learner.state_dict()["objective"]
    assert all(torch.equal(before[k], after[k]) for k in before), "weights, scores and BN statistics unchanged"
    assert {m.slot for m in masked_layers(learner.encoder)} == {plugin.slots[2]} and learner.objective.training


def test_feature_task_inference_finds_the_task_of_held_out_real_digits():
    """Three class tasks of real MNIST digits, 30 steps each: held-out chunks of 32 go to their own
    task's mask far more often than chance (6 of 18), with no task id and no label."""
    tasks = [train_test(t, 0.2, 0) for t in task_stream("mnist5k", "class", 5, 16, 0)[:3]]
    learner = make_learner(score_steps=10, select_batches=2)
    gen = torch.Generator().manual_seed(0)
    for t, (train, _) in enumerate(tasks):
        learner.begin_task(t)
        for _ in range(30):
            learner.step(train.images[torch.randint(0, len(train.labels), (32,), generator=gen)])
    learner.end_task()
    plugin = learner.plugin("exssnet")
    assert sorted(plugin.gaussians) == [0, 1, 2]
    found = [plugin.infer_task(learner, chunk) == t for t, (_, test) in enumerate(tasks)
             for chunk in test.images[:192].split(32)]
    assert sum(found) >= 12, f"{sum(found)} of {len(found)} chunks found their task"


def test_feature_task_inference_mid_task_uses_the_images_seen_so_far():
    learner = make_learner()
    plugin = learner.plugin("exssnet")
    learner.begin_task(0)
    assert plugin.infer_task(learner, noise(0)) == 0                 # nothing seen yet: the current task
    learner.step(blue_classes(0)[0])
    learner.begin_task(1)
    learner.step(blue_classes(1)[0] // 4)                            # darker images: another task
    assert list(plugin.gaussians) == [0] and len(plugin.task_images) == 32
    assert plugin.infer_task(learner, blue_classes(2)[0] // 4) == 1  # task 1 from its images so far
    assert plugin.infer_task(learner, blue_classes(3)[0]) == 0


def test_a_snapshot_is_a_plain_resnet_computing_its_tasks_masked_features(tmp_path):
    """Downstream teams pull a torchvision ResNet; for a supermask encoder it must be the mask of
    the snapshot's task, and stay so after later tasks train."""
    learner = make_learner()
    publisher = SnapshotPublisher(tmp_path)
    learner.begin_task(0)
    for s in range(3):
        learner.step(noise(s))
    publisher.publish(learner, reason="task_end", task=0, segment=0, positions={})
    probe = noise(50)
    task0 = learner.embed(probe)
    learner.begin_task(1)
    for s in range(3):
        learner.step(noise(10 + s))
    publisher.publish(learner, reason="task_end", task=1, segment=1, positions={})
    for version, task in (("v000001", 0), ("v000002", 1)):
        encoder = load_encoder(tmp_path, version)
        assert isinstance(encoder, ResNet) and not any(isinstance(m, (MaskedConv2d, MultitaskBatchNorm2d)) for m in encoder.modules())
        learner.plugin("exssnet").use_task(learner, task)
        with torch.no_grad():
            pulled = encoder.eval()(learner.preprocess(probe))
        assert torch.allclose(pulled, learner.embed(probe), atol=1e-5)
    assert torch.allclose(load_encoder(tmp_path, "v000001").eval()(learner.preprocess(probe)), task0, atol=1e-5)


# Persistence ---------------------------------------------------------------------------------

def test_all_plugin_state_survives_save_and_restore_bit_for_bit(tmp_path):
    def roundtrip(learner, name):
        save_checkpoint(tmp_path / name, 0, learner.state_dict())
        return load_checkpoint(tmp_path / name)

    def same_objective(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.objective.state_dict().values(), b.objective.state_dict().values()))

    first = make_learner(select_batches=2)
    first.step(noise(0))
    first.begin_task(1)
    first.step(noise(10))                          # mid-selection: one kept batch pending
    selecting = roundtrip(first, "selecting")
    for s in range(3):                             # selection ends, scores, weights
        first.step(noise(11 + s))
    training_weights = roundtrip(first, "weights")
    first_after_three = {k: v.clone() for k, v in first.objective.state_dict().items()}
    first.step(noise(14))

    second = make_learner(select_batches=2)
    second.load_state_dict(selecting)
    for s in range(3):
        second.step(noise(11 + s))
    assert all(torch.equal(v, second.objective.state_dict()[k]) for k, v in first_after_three.items())
    assert second.plugin("exssnet").history == first.plugin("exssnet").history

    third = make_learner(select_batches=2)
    third.load_state_dict(training_weights)
    third.step(noise(14))
    assert same_objective(first, third)
    a, c = first.plugin("exssnet"), third.plugin("exssnet")
    assert (a.slots, a.slot, a.phase, a.steps_in_phase) == (c.slots, c.slot, c.phase, c.steps_in_phase)
    assert list(a.gaussians) == list(c.gaussians) == [0]               # task 0's, fitted at its end
    assert all(torch.equal(a.gaussians[0].state_dict()[k], c.gaussians[0].state_dict()[k]) for k in ("mean", "precision"))
    assert torch.equal(a.task_images.images[:len(a.task_images)], c.task_images.images[:len(c.task_images)])
    assert a.metrics() == c.metrics()
