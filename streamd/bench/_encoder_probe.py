"""Is a published encoder better than no training at all? A linear probe on scikit-learn's digits
(1,797 real images, bundled; never part of the mnist5k demo stream) with the snapshot's frozen
features, with a randomly initialised encoder of the same architecture, and with raw pixels.

The demo prints it, because a representation that only matches a random one has learnt nothing a
downstream team could use, and nothing else would tell them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from streamd.client import load_encoder
from streamd.learning.preprocess import Preprocess
from streamd.learning.data import load_dataset, to_rgb
from streamd.learning.evaluation import linear_probe_accuracy
from streamd.models.encoders import module_from_architecture
from streamd.service.snapshots import CONFIG, LATEST, resolve_version


@torch.no_grad()
def _features(net: torch.nn.Module, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    net.eval()
    pre = Preprocess()
    return torch.cat([net(pre(images[i:i + chunk])) for i in range(0, len(images), chunk)])


def digits_linear_probe(snapshot_root: Path, version: str = LATEST, seed: int = 0) -> dict:
    """Test accuracies (30% of digits held out, seeded) of the three feature sets, and the margin."""
    folder = snapshot_root / resolve_version(snapshot_root, version)
    config = json.loads((folder / CONFIG).read_text())
    images, labels = load_dataset("digits")
    x = to_rgb(images, config["image_size"])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.7 * len(order))
    train, test = order[:cut], order[cut:]

    def probe(feats: torch.Tensor) -> float:
        return linear_probe_accuracy(feats[train], labels[train], feats[test], labels[test])

    torch.manual_seed(seed)
    random_net = module_from_architecture(config["module"])
    result = {"snapshot": folder.name, "trained": probe(_features(load_encoder(folder), x)),
              "random_init": probe(_features(random_net, x)), "raw_pixels": probe(x.flatten(1).float() / 255)}
    result["margin_over_random"] = result["trained"] - result["random_init"]
    return result
