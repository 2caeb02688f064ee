"""The two-view augmentation draws its random parameters per sample, not once per batch."""
from __future__ import annotations

import torch

from cl_fixtures import IMAGE_SIZE, images
from streamd.learning.augment import TwoViewAugment
from streamd.learning.preprocess import Preprocess


def test_identical_images_in_one_batch_get_different_views():
    torch.manual_seed(0)
    one = images(1)
    v1, v2 = TwoViewAugment(IMAGE_SIZE)(one.repeat(8, 1, 1, 1))
    for views in (v1, v2):
        assert views.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE) and views.dtype == torch.float32
        distinct = {tuple(v.flatten()[:64].tolist()) for v in views}
        assert len(distinct) == 8, "every sample of a batch needs its own random draw"


def test_the_two_views_of_an_image_differ():
    torch.manual_seed(0)
    v1, v2 = TwoViewAugment(IMAGE_SIZE)(images(8))
    assert all(not torch.allclose(a, b) for a, b in zip(v1, v2))


def test_input_is_left_untouched_and_preprocess_is_deterministic():
    x = images(4)
    before = x.clone()
    TwoViewAugment(IMAGE_SIZE)(x)
    assert torch.equal(x, before)
    pre = Preprocess()
    assert torch.equal(pre(x), pre(x))
    assert float(pre(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).max()) == 1.0
