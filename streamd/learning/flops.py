"""Counting the backward FLOPs of a learner step (what layer freezing is meant to save)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def buffers_restored(module: nn.Module):
    """Runs a measurement in train mode without leaving a trace in BN running statistics."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def backward_flops(learner, images: torch.Tensor) -> int:
    """FLOPs of the backward pass of one training step of ``learner`` on uint8 ``images``.

    The loss is the SSL loss plus every plugin's extra terms, on the two augmented views, with
    the encoder's current frozen prefix. ``before_step`` is left out so the measurement draws
    nothing from replay buffers; instead ``images`` is padded to the row count of the learner's
    last training batch (stream + replayed rows), since FLOPs depend on the count, not the pixels.
    The model, its BN statistics, its grads and the RNG are left as they were.
    """
    rows = max(len(images), learner.last_batch_rows)
    images = images.repeat(-(-rows // len(images)), 1, 1, 1)[:rows]
    objective = learner.objective
    was_training = objective.training
    objective.train()
    batch = learner.make_batch(images)
    with torch.random.fork_rng(devices=[learner.device] if learner.device.type == "cuda" else []), \
            buffers_restored(objective):
        batch.views = learner.views_of(batch.images)
        with learner.autocast():
            out = objective(*batch.views)
            total = out.loss
            for p in learner.plugins:
                total = total + sum(p.extra_loss(learner.context, batch, out).values())
        with FlopCounterMode(display=False) as counter:
            total.backward()
    for p in learner.trainable_parameters():
        p.grad = None
    objective.train(was_training)
    return int(counter.get_total_flops())
