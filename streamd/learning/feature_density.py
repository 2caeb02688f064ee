"""A Gaussian model of one task's embeddings: which task's mask a batch of images belongs to.

A mask learner without a task header must pick a mask. Each task's own mask maps that task's
images to a region of its feature space; a Gaussian fitted there (mean and a Ledoit-Wolf shrunk
covariance, which stays well conditioned with fewer samples than dimensions) scores new images by
their squared Mahalanobis distance divided by the dimension. For images of the task the expected
value is about the same whatever the space (near 1; the shrinkage makes it lower, 0.6 in the
tests), so scores of different masks' spaces can be compared directly: the task whose mask sees
a batch as least out of distribution wins (the Mahalanobis out-of-distribution score of Lee et
al. 2018, used per task). The model keeps statistics of features, never images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf


class FeatureGaussian:
    def __init__(self, mean: torch.Tensor, precision: torch.Tensor):
        self.mean = mean            # (d,) float64
        self.precision = precision  # (d, d) float64

    @classmethod
    def fit(cls, features: torch.Tensor) -> "FeatureGaussian":
        """Fits L2-normalized features (N, d); N >= 2."""
        x = F.normalize(features.double(), dim=1)
        estimate = LedoitWolf().fit(x.numpy())
        return cls(torch.from_numpy(estimate.location_), torch.from_numpy(estimate.precision_))

    def score(self, features: torch.Tensor) -> float:
        """Mean squared Mahalanobis distance per dimension of L2-normalized ``features`` (lower = closer)."""
        x = F.normalize(features.double(), dim=1) - self.mean
        return float(((x @ self.precision) * x).sum(1).mean() / x.shape[1])

    def state_dict(self) -> dict:
        return {"mean": self.mean, "precision": self.precision}

    @classmethod
    def from_state_dict(cls, state: dict) -> "FeatureGaussian":
        return cls(state["mean"], state["precision"])
