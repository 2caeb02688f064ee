"""The learner: exact save/restore through a real checkpoint, non-finite guard, LR schedules."""
from __future__ import annotations

import math

import pytest
import torch

from cl_fixtures import assert_same_next_step, images, tiny_learner, train
from streamd.learning.learner import Learner
from streamd.learning.optim import OptimConfig, build_optimizer, build_scheduler
from streamd.learning.plugins import Plugin, TaskMasks


@pytest.mark.parametrize("strategy,objective", [("finetune", "simsiam"), ("finetune", "byol"),
                                                ("replay", "simsiam"), ("lump", "simsiam")])
def test_restored_learner_takes_the_same_next_step_bit_for_bit(strategy, objective, tmp_path):
    learner = tiny_learner(strategy, objective, seed=0)
    train(learner, 0, 2)
    train(learner, 1, 2)          # replay/LUMP now sample from a filled buffer
    fresh = tiny_learner(strategy, objective, seed=123)   # different initial weights and RNG
    assert_same_next_step(learner, fresh, tmp_path)
    assert (fresh.step_count, fresh.task) == (learner.step_count, learner.task)


def test_restore_is_not_vacuous():
    """Without loading the checkpoint the other learner's step differs, so the check above has teeth."""
    learner, fresh = tiny_learner("replay", seed=0), tiny_learner("replay", seed=123)
    x = images(seed=999)
    assert learner.step(x).loss != fresh.step(x).loss


class PoisonPlugin(Plugin):
    """Adds a NaN loss term on demand."""

    name = "poison"

    def __init__(self):
        self.active = False

    def extra_loss(self, ctx, batch, out):
        return {"poison": torch.tensor(float("nan"))} if self.active else {}


def test_non_finite_loss_skips_the_step_and_counts_it():
    poison = PoisonPlugin()
    torch.manual_seed(0)
    base = tiny_learner("replay")
    learner = Learner(base.objective, base.augment, base.plugins + [poison], device="cpu")
    learner.step(images())
    weights = [p.detach().clone() for p in learner.objective.parameters()]
    buffer_seen = learner.plugins[0].buffer.seen
    poison.active = True
    result = learner.step(images(seed=1))
    assert result.skipped and math.isnan(result.loss)
    assert (learner.nonfinite_steps, learner.step_count) == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(weights, learner.objective.parameters()))
    assert learner.plugins[0].buffer.seen == buffer_seen          # nothing learned from the bad batch
    poison.active = False
    assert not learner.step(images(seed=2)).skipped and learner.step_count == 2


def lrs(cfg: OptimConfig, steps: int) -> list[float]:
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_schedule():
    got = lrs(OptimConfig(lr=1.0, schedule="cosine", warmup_steps=4, total_steps=12), 14)
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert got[4:13] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)])
    assert got[13] == pytest.approx(0.0)           # stays at the end of the cosine


def test_constant_schedule_for_endless_streams_with_warmup():
    got = lrs(OptimConfig(lr=0.1, schedule="constant", warmup_steps=2), 1000)
    assert got[:2] == pytest.approx([0.05, 0.1]) and set(got[2:]) == {0.1}


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
def test_each_optimizer_trains(name):
    torch.manual_seed(0)
    learner = tiny_learner("finetune")
    learner.optimizer = build_optimizer(learner.trainable_parameters(), OptimConfig(name=name, lr=0.01))
    learner.scheduler = build_scheduler(learner.optimizer, learner.optim_cfg)
    before = [p.detach().clone() for p in learner.encoder.parameters()]
    learner.step(images())
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.encoder.parameters()))


@pytest.mark.parametrize("objective", ["simsiam", "simclr", "barlow"])
def test_a_single_image_trains_a_real_step(objective):
    """A slow stream can hand the learner one image: it must move the weights, not be skipped or fail."""
    learner = tiny_learner("replay", objective, seed=0)
    before = [p.detach().clone() for p in learner.encoder.parameters()]
    result = learner.step(images(n=1, seed=5), torch.tensor([3]))
    assert not result.skipped and math.isfinite(result.loss) and learner.step_count == 1
    assert any(not torch.equal(b, p) for b, p in zip(before, learner.encoder.parameters()))


class RecordingMasks(TaskMasks):
    """Per-task 'masks' that record which task the encoder is switched to, and when restored."""

    name = "recording_masks"

    def __init__(self):
        self.switched, self.restored = [], 0

    def use_task(self, ctx, task):
        self.switched.append(task)

    def infer_task(self, ctx, images):
        return 7

    def after_restore(self, ctx):
        self.restored += 1


def test_embed_routes_a_given_task_through_the_masks_and_switches_back(tmp_path):
    masks = RecordingMasks()
    base = tiny_learner("finetune")
    learner = Learner(base.objective, base.augment, [masks], device="cpu")
    train(learner, 0, 1)
    train(learner, 1, 1)
    learner.embed(images(n=4))
    assert masks.switched == []                           # no task given: the mask in use
    learner.embed(images(n=4), task=0)
    learner.embed(images(n=4), task=5)                    # not seen yet: the current task's mask
    assert masks.switched == [0, 1, 1, 1]                 # each switch is followed by a switch back
    assert learner.infer_task(images(n=4)) == 7 and base.infer_task(images(n=4)) is None
    learner.load_state_dict(learner.state_dict())
    assert masks.restored == 1                            # after the whole state is back
