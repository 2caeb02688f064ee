"""Representation quality on labelled tasks: weighted kNN, a linear probe, and the continual-learning
metrics of an accuracy matrix R[i][j] (accuracy on task j after training task i).

The kNN follows the protocol used by InstDisc/LUMP: cosine similarity, the k nearest train
features vote with weight exp(sim / T). It needs no training, so it can run after every task.
Task-aware evaluation classifies task j's test set against task j's train set only; task-agnostic
evaluation uses a bank of every task seen so far (harder for class splits: all classes compete).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from streamd.learning.data import Task
    from streamd.learning.learner import Learner

Mode = Literal["aware", "agnostic"]
INFER_CHUNK = 64   # test images per task inference when the task id is not given


# Classifiers on frozen features ----------------------------------------------------------------
@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                k: int = 200, temperature: float = 0.1, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels of ``test_feats`` by a similarity-weighted vote of the k nearest train rows."""
    train = F.normalize(train_feats.float(), dim=1)
    classes, train_idx = train_labels.unique(return_inverse=True)
    k = min(k, len(train))
    preds = []
    for chunk in test_feats.float().split(batch_size):
        sim, nn_idx = (F.normalize(chunk, dim=1) @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), len(classes))
        votes.scatter_add_(1, train_idx[nn_idx], (sim / temperature).exp())
        preds.append(classes[votes.argmax(1)])
    return torch.cat(preds) if preds else torch.zeros(0, dtype=train_labels.dtype)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, **kwargs) -> float:
    return _accuracy(knn_predict(train_feats, train_labels, test_feats, **kwargs), test_labels)


def linear_probe_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                          test_labels: torch.Tensor, weight_decay: float = 1e-4, iterations: int = 100) -> float:
    """Multinomial logistic regression on standardized frozen features (full-batch L-BFGS: small, exact,
    deterministic)."""
    classes, y = train_labels.unique(return_inverse=True)
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    x = (train_feats.float() - mean) / std
    probe = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        preds = classes[probe((test_feats.float() - mean) / std).argmax(1)]
    return _accuracy(preds, test_labels)


def _accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return float((preds == labels).float().mean()) if len(labels) else float("nan")


# Continual-learning metrics -----------------------------------------------------------------------
def average_accuracy(R: Sequence[Sequence[float]]) -> float:
    """Mean accuracy over all tasks after the last one."""
    return sum(R[-1]) / len(R[-1])


def forgetting(R: Sequence[Sequence[float]]) -> float:
    """For each earlier task j: the best accuracy it had after being learned (rows j..T-2) minus its
    final accuracy, averaged. Rows before j are not counted: nothing can be forgotten before it is
    learned (Chaudhry et al. 2018; LUMP). 0 for a single task."""
    T = len(R)
    if T < 2:
        return 0.0
    return sum(max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """Mean over earlier tasks of final accuracy minus the accuracy right after learning them
    (Lopez-Paz & Ranzato 2017); negative means forgetting."""
    T = len(R)
    if T < 2:
        return 0.0
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


# Evaluating a learner ------------------------------------------------------------------------------
def embed_unknown_task(learner: "Learner", images: torch.Tensor, chunk: int = INFER_CHUNK) -> torch.Tensor:
    """Features of ``images`` whose task is not given: a learner with per-task masks infers the task
    of each chunk of ``chunk`` images (one chunk is assumed to come from one task, as in SupSup's
    one-batch inference) and embeds the chunk through that task's mask."""
    if learner.task_masks is None:
        return learner.embed(images)
    return torch.cat([learner.embed(part, task=learner.infer_task(part)) for part in images.split(chunk)])


def task_inference_accuracy(learner: "Learner", splits: Sequence[tuple["Task", "Task"]],
                            chunk: int = INFER_CHUNK) -> float | None:
    """Share of test chunks whose task a mask learner infers correctly; None without masks."""
    if learner.task_masks is None:
        return None
    hits = [learner.infer_task(part) == j for j, (_, test) in enumerate(splits) for part in test.images.split(chunk)]
    return sum(hits) / len(hits)


def accuracy_row(learner: "Learner", splits: Sequence[tuple["Task", "Task"]], seen: int,
                 mode: Mode = "aware", classifier: str = "knn") -> list[float]:
    """Row ``seen`` of R: accuracy on every task j after training tasks 0..seen, from the
    (train, test) pairs of ``streamd.learning.data.train_test``.

    aware: task j's test set against task j's train features. agnostic: against the train features
    of all tasks 0..seen (an unseen class can never be predicted, so unseen class tasks score 0);
    the test images' task is not given, so a mask learner has to infer it (``embed_unknown_task``).
    """
    classify = {"knn": knn_accuracy, "linear": linear_probe_accuracy}[classifier]
    train = [(learner.embed(tr.images, task=j), tr.labels) for j, (tr, _) in enumerate(splits)]
    bank = (torch.cat([f for f, _ in train[: seen + 1]]), torch.cat([y for _, y in train[: seen + 1]]))
    row = []
    for j, (_, test) in enumerate(splits):
        feats, labels = train[j] if mode == "aware" else bank
        test_feats = learner.embed(test.images, task=j) if mode == "aware" else embed_unknown_task(learner, test.images)
        row.append(classify(feats, labels, test_feats, test.labels))
    return row
