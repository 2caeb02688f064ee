"""Two-view SSL augmentation, batched with per-sample random draws (kornia) on the training device.

torchvision.transforms.v2 draws ONE set of parameters for a whole batch tensor, which makes
both views of every image in a batch share a crop; kornia samples parameters per image.
"""
from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from streamd.learning.preprocess import MEAN, STD


class TwoViewAugment(nn.Module):
    """uint8 (N,C,H,W) -> two normalized float views (the SimCLR/BYOL recipe)."""

    def __init__(self, image_size: int, min_scale: float = 0.2, jitter: float = 0.4, jitter_p: float = 0.8,
                 gray_p: float = 0.2, blur_p: float = 0.0, solarize_p: float = 0.0,
                 mean=MEAN, std=STD):
        super().__init__()
        self.image_size = image_size
        steps = [
            K.RandomResizedCrop((image_size, image_size), scale=(min_scale, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(jitter, jitter, jitter, min(jitter / 4, 0.1), p=jitter_p),
            K.RandomGrayscale(p=gray_p),
        ]
        if blur_p > 0:
            k = max(3, (image_size // 10) | 1)
            steps.append(K.RandomGaussianBlur((k, k), (0.1, 2.0), p=blur_p))
        if solarize_p > 0:
            steps.append(K.RandomSolarize(0.0, 0.0, p=solarize_p))
        steps.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
        self.pipeline = nn.Sequential(*steps)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().div_(255)
        return self.pipeline(x), self.pipeline(x)
