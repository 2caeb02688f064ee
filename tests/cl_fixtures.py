"""Tiny learners and a save/restore check shared by the continual-learning plugin tests."""
from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from streamd.service.checkpoint import load_checkpoint, save_checkpoint
from streamd.learning.learner import Learner, build_learner

IMAGE_SIZE = 16
_HEADS = {"proj_hidden": 64, "proj_dim": 32}
_PREDICTED = {"simsiam", "byol", "mocov3"}   # objectives that also have a predictor head


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These models are tiny: on the 2 shared cores a second intra-op thread mostly waits
    (measured here under load: 5 steps 0.4 s CPU with 1 thread, 4.1 s with 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def objective_kwargs(objective: str) -> dict:
    return {**_HEADS, "pred_hidden": 16} if objective in _PREDICTED else dict(_HEADS)


def tiny_learner(strategy: str, objective: str = "simsiam", seed: int = 0, **plugin_options) -> Learner:
    """resnet_tiny at 16 px on the CPU; ``plugin_options`` maps plugin name -> kwargs."""
    torch.manual_seed(seed)
    return build_learner(arch="resnet_tiny", image_size=IMAGE_SIZE, objective=objective, strategy=strategy,
                         objective_kwargs=objective_kwargs(objective), plugin_options=plugin_options, device="cpu")


def images(n: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (n,3,16,16) images: smooth random blobs, so crops of one image look alike."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, 4, 4), generator=gen)
    return (torch.nn.functional.interpolate(coarse, size=IMAGE_SIZE, mode="bilinear") * 255).to(torch.uint8)


def train(learner: Learner, task: int, steps: int, labels: torch.Tensor | None = None, seed: int = 0) -> None:
    learner.begin_task(task)
    for i in range(steps):
        learner.step(images(seed=seed + 100 * task + i), labels)


def assert_same_state(a, b, path: str = "state") -> None:
    """Nested plugin states (dicts, tensors, Arrow tables, plain values) are identical."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, pa.Table):
        assert a.equals(b, check_metadata=True), path
    else:
        assert a == b, path


def assert_same_next_step(learner: Learner, fresh: Learner, tmp_path, labels: torch.Tensor | None = None) -> None:
    """Checkpoint ``learner`` to real files, restore into ``fresh``: both take the same next step,
    bit for bit, and end that task into the same plugin state."""
    save_checkpoint(tmp_path, learner.step_count, learner.state_dict())
    x = images(seed=999)
    expected = learner.step(x, labels)
    fresh.load_state_dict(load_checkpoint(tmp_path))
    got = fresh.step(x, labels)
    assert got.terms == expected.terms and got.loss == expected.loss
    for (name, a), b in zip(learner.objective.state_dict().items(), fresh.objective.state_dict().values()):
        assert torch.equal(a, b), name
    for p, q in zip(learner.plugins, fresh.plugins):
        assert p.metrics() == q.metrics()
        for m, n in zip(p.trainable_modules(), q.trainable_modules()):
            for a, b in zip(m.state_dict().values(), n.state_dict().values()):
                assert torch.equal(a, b)
    rng = torch.get_rng_state()  # a task end may draw augmentations (EWC): the same draws for both
    learner.begin_task(learner.task + 1)
    torch.set_rng_state(rng)
    fresh.begin_task(fresh.task + 1)
    for p, q in zip(learner.plugins, fresh.plugins):
        assert_same_state(p.state_dict(), q.state_dict(), p.name)
