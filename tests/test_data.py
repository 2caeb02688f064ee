"""Task splits of the shipped datasets: what each split promises about its tasks."""
from __future__ import annotations

import torch

from streamd.learning.data import Task, load_dataset, split_tasks, to_rgb, train_test


def digits_rgb(size: int = 8):
    images, labels = load_dataset("digits")
    return to_rgb(images, size), labels


def test_class_split_gives_disjoint_class_groups_covering_the_data():
    images, labels = digits_rgb()
    tasks = split_tasks(images, labels, "class", 5)
    groups = [set(t.labels.tolist()) for t in tasks]
    assert all(len(g) == 2 for g in groups)
    assert set().union(*groups) == set(range(10))
    assert sum(len(g) for g in groups) == 10     # no class in two tasks
    assert sum(len(t.labels) for t in tasks) == len(labels)


def test_rotation_split_rotates_each_task_and_keeps_all_classes():
    images, labels = digits_rgb()
    rotated = split_tasks(images, labels, "rotation", 3, seed=0)
    plain = split_tasks(images, labels, "rotation", 1, seed=0)[0]
    assert all(set(t.labels.tolist()) == set(range(10)) for t in rotated)
    # Task 0 is unrotated; later tasks hold the same kind of data turned, so their pixels differ.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    first = order.tensor_split(3)[1]
    assert torch.equal(rotated[0].images, images[order.tensor_split(3)[0]])
    assert not torch.equal(rotated[1].images, images[first])
    assert torch.equal(rotated[1].labels, labels[first])
    assert len(plain.labels) == len(labels)


def test_permutation_and_colour_splits_transform_later_tasks():
    images, labels = digits_rgb()
    for split in ("permutation", "colour"):
        tasks = split_tasks(images, labels, split, 2, seed=0)
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tensor_split(2)
        assert torch.equal(tasks[0].images, images[idx[0]]), split
        assert not torch.equal(tasks[1].images, images[idx[1]]), split
        assert tasks[1].images.dtype == torch.uint8


def test_train_test_split_is_disjoint_seeded_and_complete():
    ids = torch.arange(100)
    task = Task(3, ids.view(-1, 1, 1, 1).to(torch.uint8), ids)   # each image carries its own id
    train, test = train_test(task, 0.2, seed=1)
    again, _ = train_test(task, 0.2, seed=1)
    other, _ = train_test(task, 0.2, seed=2)
    assert len(test.labels) == 20
    assert set(train.labels.tolist()).isdisjoint(test.labels.tolist())
    assert set(train.labels.tolist()) | set(test.labels.tolist()) == set(range(100))
    assert torch.equal(train.images.flatten().long(), train.labels)
    assert torch.equal(train.labels, again.labels) and not torch.equal(train.labels, other.labels)


def test_to_rgb_resizes_and_expands_grey():
    images, _ = load_dataset("digits")
    rgb = to_rgb(images[:4], 16)
    assert rgb.shape == (4, 3, 16, 16) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[:, 0], rgb[:, 2])
