"""Layer freezing: linear CKA, the freezing decision, frozen parameters, backward FLOPs, persistence."""
from __future__ import annotations

import pytest
import torch

from streamd.service.checkpoint import load_checkpoint, save_checkpoint
from streamd.learning.flops import backward_flops
from streamd.learning.learner import build_learner
from streamd.learning.optim import OptimConfig
from streamd.learning.plugins.freeze import frozen_prefix_after
from streamd.learning.similarity import centered_gram, linear_cka

TINY = {"arch": "resnet_tiny", "image_size": 16, "objective": "simsiam",
        "objective_kwargs": {"proj_hidden": 128, "proj_dim": 64, "pred_hidden": 32}}


def make_learner(optim: OptimConfig | None = None, **freeze_options):
    torch.manual_seed(0)
    return build_learner(**TINY, strategy="lump+freeze", plugin_options={"freeze": freeze_options},
                         device="cpu", optim=optim)


def images(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def roundtrip(state: dict, folder) -> dict:
    """The state as a fresh process reads it back from a real checkpoint."""
    save_checkpoint(folder, 0, state)
    return load_checkpoint(folder)


# CKA ----------------------------------------------------------------------------------------

def test_cka_of_features_with_themselves_is_one():
    x = torch.randn(64, 3, 5, 5)
    assert float(linear_cka(x, x)) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transform_and_isotropic_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 20, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    y = torch.randn(100, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 20, generator=g, dtype=torch.float64) + 0.5 * x
    base = float(linear_cka(x, y))
    assert 0.05 < base < 0.95
    assert float(linear_cka(7.5 * x @ q, y)) == pytest.approx(base, abs=1e-10)
    assert float(linear_cka(x, y @ q * 0.01)) == pytest.approx(base, abs=1e-10)


def test_cka_is_low_for_independent_features_and_debiasing_fixes_high_dimensions():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(500, 10, generator=g), torch.randn(500, 10, generator=g)
    assert float(linear_cka(x, y)) < 0.1
    wide_x, wide_y = torch.randn(50, 4000, generator=g), torch.randn(50, 4000, generator=g)
    assert float(linear_cka(wide_x, wide_y)) > 0.8           # the known bias of the plain estimator
    assert abs(float(linear_cka(wide_x, wide_y, debiased=True))) < 0.1
    assert float(linear_cka(wide_x, wide_x, debiased=True)) == pytest.approx(1.0, abs=1e-12)


def test_gram_accumulated_over_column_chunks_matches_one_float64_product():
    x = torch.randn(30, 1000)
    xc = x.double() - x.double().mean(0)
    assert torch.allclose(centered_gram(x, chunk=64), xc @ xc.T, rtol=1e-12, atol=1e-9)


# Freezing decision ---------------------------------------------------------------------------

def test_prefix_rule_is_bottom_up_capped_and_never_freezes_everything():
    cka = [0.99, 0.95, 0.5, 0.99, 0.99]
    assert frozen_prefix_after(cka, frozen=0, threshold=0.9, max_new=5) == 2   # stops at the first miss
    assert frozen_prefix_after(cka, frozen=0, threshold=0.9, max_new=1) == 1   # at most K new blocks
    assert frozen_prefix_after([1.0] * 5, frozen=0, threshold=0.9, max_new=9) == 4  # never all blocks
    assert frozen_prefix_after(cka, frozen=3, threshold=0.9, max_new=5) == 4   # extends an earlier prefix
    assert frozen_prefix_after(cka, frozen=0, threshold=0.999, max_new=5) == 0


def run_two_tasks(learner, disturb=None):
    """Task 0 for 1 step, then task 1 for 1 step, after which the plugin decides (decide_after=1)."""
    learner.step(images(0))
    learner.begin_task(1)                       # the previous-task copy is taken here
    if disturb is not None:
        disturb(learner.encoder)
    learner.step(images(10))
    return learner.plugin("freeze")


def still_learner(**options):
    """A learner whose training leaves the encoder exactly as it was (no lr, no BN statistics updates)."""
    learner = make_learner(OptimConfig(lr=0.0, momentum=0.0, weight_decay=0.0), **options)
    for m in learner.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    return learner


def test_freezing_follows_the_cka_of_each_block():
    unchanged = run_two_tasks(still_learner(threshold=0.8, max_new_blocks=5, decide_after=1))
    cka = unchanged.history[-1]["cka"]
    assert cka == pytest.approx([1.0] * 5, abs=1e-9)
    assert unchanged.ctx.encoder.frozen_blocks == 4          # all but the last block

    def redraw_layer2(encoder):  # as if task 1 had rewritten layer2 completely
        with torch.no_grad():
            for p in encoder.net.layer2.parameters():
                if p.ndim == 4:
                    p.copy_(torch.randn_like(p) * p.std())

    changed = run_two_tasks(still_learner(threshold=0.8, max_new_blocks=5, decide_after=1), redraw_layer2)
    cka = changed.history[-1]["cka"]
    assert cka[0] > 0.8 and cka[1] > 0.8 and cka[2] < 0.8, cka
    assert changed.ctx.encoder.frozen_blocks == 2            # stem and layer1: the prefix that passed
    assert changed.metrics()["frozen_blocks"] == 2.0


# Frozen parameters and FLOPs -----------------------------------------------------------------

def test_frozen_blocks_get_no_grad_and_stay_bit_identical_under_momentum_and_weight_decay():
    learner = make_learner(OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.01), threshold=-1.0,
                           max_new_blocks=2, decide_after=1)
    learner.step(images(0))          # momentum buffers of every block are non-zero now
    assert learner.plugin("freeze").metrics() == {"frozen_blocks": 0.0, "backward_flops_saved_ratio": 0.0}
    learner.begin_task(1)
    learner.step(images(1))          # decision: stem and layer1 freeze
    assert learner.encoder.frozen_blocks == 2
    frozen = [*learner.encoder.block("stem").parameters(), *learner.encoder.net.layer1.parameters()]
    frozen_state = {k: v.clone() for k, v in learner.encoder.state_dict().items()
                    if k.startswith(("net.conv1", "net.bn1", "net.layer1"))}
    trainable_before = learner.encoder.net.layer2[0].conv1.weight.clone()
    for s in range(2):
        learner.step(images(2 + s))
        assert all(p.grad is None and not p.requires_grad for p in frozen)
    after = learner.encoder.state_dict()
    for key, value in frozen_state.items():   # weights and BN running statistics
        assert torch.equal(after[key], value), key
    assert not torch.equal(learner.encoder.net.layer2[0].conv1.weight, trainable_before)

    saved = learner.plugin("freeze").metrics()["backward_flops_saved_ratio"]
    with_frozen = backward_flops(learner, images(1, n=4))
    learner.encoder.freeze_prefix(0)
    assert saved == pytest.approx(1 - with_frozen / backward_flops(learner, images(1, n=4)))
    assert saved > 0.1


def test_backward_flops_fall_with_frozen_blocks_and_leave_the_model_untouched():
    learner = make_learner()
    batch = images(1, n=4)
    state = {k: v.clone() for k, v in learner.objective.state_dict().items()}
    rng = torch.get_rng_state()
    flops = []
    for k in (0, 2, 4):
        learner.encoder.freeze_prefix(k)
        flops.append(backward_flops(learner, batch))
    assert flops[0] > flops[1] > flops[2] > 0, flops
    assert all(torch.equal(v, learner.objective.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in learner.objective.parameters())


# Persistence ---------------------------------------------------------------------------------

def test_a_pending_decision_survives_save_and_restore_bit_for_bit(tmp_path):
    options = {"threshold": 0.5, "max_new_blocks": 3, "decide_after": 2}
    first = make_learner(**options)
    first.step(images(0))
    first.begin_task(1)
    first.step(images(1))            # the previous-task copy and one probe batch are pending
    state = roundtrip(first.state_dict(), tmp_path)
    first.step(images(2))            # the decision, from the copy and the probe
    second = make_learner(**options)
    second.load_state_dict(state)    # also restores the RNG the first learner's step started from
    second.step(images(2))
    a, b = first.plugin("freeze"), second.plugin("freeze")
    assert a.history == b.history and len(a.history) == 1
    assert a.metrics() == b.metrics()
    assert first.encoder.frozen_blocks == second.encoder.frozen_blocks > 0
    for (name, p), q in zip(first.objective.state_dict().items(), second.objective.state_dict().values()):
        assert torch.equal(p, q), name
    third = make_learner(**options)
    third.load_state_dict(roundtrip(first.state_dict(), tmp_path))
    assert third.encoder.frozen_blocks == first.encoder.frozen_blocks
    assert third.plugin("freeze").metrics() == a.metrics()
