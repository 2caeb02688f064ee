"""kNN and linear probe on toy features; accuracy-matrix metrics against hand-computed values."""
from __future__ import annotations

import pytest
import torch

from streamd.learning.data import Task
from streamd.learning.evaluation import (accuracy_row, average_accuracy, backward_transfer, forgetting, knn_accuracy,
                                knn_predict, linear_probe_accuracy, task_inference_accuracy)


def clusters(n_per_class: int, classes: list[int], dim: int = 16, seed: int = 0, spread: float = 0.3):
    """Gaussian blobs around random unit directions, one per class: separable by angle."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(max(classes) + 1, dim, generator=torch.Generator().manual_seed(42)), dim=1)
    labels = torch.tensor(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=gen) / dim ** 0.5, labels


def test_knn_exceeds_90_percent_on_a_separable_toy_set():
    train_x, train_y = clusters(100, list(range(5)), seed=0)
    test_x, test_y = clusters(40, list(range(5)), seed=1)
    assert knn_accuracy(train_x, train_y, test_x, test_y) > 0.9


def test_knn_fails_on_shuffled_labels():
    train_x, train_y = clusters(100, list(range(5)), seed=0)
    test_x, test_y = clusters(40, list(range(5)), seed=1)
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    assert knn_accuracy(train_x, shuffled, test_x, test_y) < 0.5


def test_knn_weights_votes_by_similarity_and_caps_k():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([7, 3, 3])
    # Nearly aligned with the lone class-7 row: exp(0.99/0.1) outweighs two votes of exp(0.14/0.1).
    query = torch.tensor([[0.99, 0.14]])
    assert knn_predict(train, labels, query, k=200).tolist() == [7]
    assert knn_predict(train, labels, query, k=3, temperature=100.0).tolist() == [3]   # ~ a plain majority vote
    assert knn_predict(train, labels, query, k=1).tolist() == [7]


def test_linear_probe_separates_and_keeps_original_labels():
    train_x, train_y = clusters(60, [2, 5, 9], seed=0)
    test_x, test_y = clusters(30, [2, 5, 9], seed=1)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) > 0.9
    assert linear_probe_accuracy(train_x, train_y, test_x, (test_y + 1) % 10) < 0.1


R = [[0.9, 0.1, 0.2],
     [0.6, 0.8, 0.3],
     [0.5, 0.7, 0.95]]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_forgetting_by_hand():
    # task 0: best after learning it max(0.9, 0.6) = 0.9, final 0.5 -> 0.4
    # task 1: best after learning it 0.8, final 0.7 -> 0.1 (row 0's 0.1 came before it was learned)
    assert forgetting(R) == pytest.approx((0.4 + 0.1) / 2)
    # a task that got better after it was learned: best earlier 0.6 < final 0.7 -> negative contribution
    assert forgetting([[0.6, 0.0], [0.7, 0.9]]) == pytest.approx(-0.1)
    assert forgetting([[0.8]]) == 0.0


def test_backward_transfer_by_hand():
    assert backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert backward_transfer([[0.8]]) == 0.0


class FlatLearner:
    """Just what accuracy_row needs: features are the flattened images; no per-task masks."""

    task_masks = None

    def embed(self, images, task=None):
        return images.flatten(1).float()


def toy_splits():
    """Two class-incremental tasks (classes 0,1 then 2,3) whose 'images' are cluster points."""
    def task(t, classes, seed):
        x, y = clusters(30, classes, dim=8, seed=seed)
        return Task(t, x.view(-1, 2, 2, 2), y)
    return [(task(t, classes, t), task(t, classes, 10 + t)) for t, classes in enumerate([[0, 1], [2, 3]])]


def test_task_aware_and_agnostic_rows():
    splits, learner = toy_splits(), FlatLearner()
    assert accuracy_row(learner, splits, seen=1, mode="aware") == [1.0, 1.0]
    # After task 0 only, the agnostic bank has no class of task 1: it can never be right there.
    assert accuracy_row(learner, splits, seen=0, mode="agnostic") == [1.0, 0.0]
    assert accuracy_row(learner, splits, seen=1, mode="agnostic", classifier="linear") == [1.0, 1.0]


def test_aware_rows_embed_each_task_through_its_own_task():
    class TaskRecorder(FlatLearner):
        tasks = []

        def embed(self, images, task=None):
            self.tasks.append(task)
            return super().embed(images)

    learner = TaskRecorder()
    accuracy_row(learner, toy_splits(), seen=1)
    assert learner.tasks == [0, 1, 0, 1]      # train features of tasks 0 and 1, then each test set


class MaskedFlatLearner(FlatLearner):
    """Per-task 'masks' that flip a task-specific set of feature signs; ``infer`` plays the task inference."""

    task_masks = "signs"

    def __init__(self, infer):
        self.infer = infer

    def infer_task(self, images):
        return self.infer(images)

    def embed(self, images, task=None):
        signs = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(1 if task is None else task)) * 2 - 1
        return images.flatten(1).float() * signs


@pytest.mark.parametrize("infer, expected", [(lambda images: 0 if images.mean() < 10 else 1, 1.0),
                                             (lambda images: 0, 0.5)])
def test_agnostic_rows_embed_test_chunks_through_the_inferred_task_mask(infer, expected):
    splits = toy_splits()
    for j, (_, test) in enumerate(splits):   # tell the true task apart by an offset the inference can see
        test.images += 100 * j
        splits[j][0].images += 100 * j
    learner = MaskedFlatLearner(infer)
    assert task_inference_accuracy(learner, splits) == expected
    row = accuracy_row(learner, splits, seen=1, mode="agnostic")
    if expected == 1.0:
        assert row == [1.0, 1.0]
    else:   # task 1's test chunk went through task 0's mask: its features no longer match its train features
        assert row[0] == 1.0 and row[1] < 0.9
    assert task_inference_accuracy(FlatLearner(), splits) is None
