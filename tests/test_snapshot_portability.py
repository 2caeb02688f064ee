"""A snapshot outlives streamd: the model card's torch/torchvision recipe, run in a process where
streamd cannot be imported, rebuilds a plain torchvision module from config.json and model.safetensors
and computes the same features as the encoder that was trained."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import timm
import torch
from publishing_fixtures import tiny_learner
from safetensors.torch import load_file, save_file

from streamd.client import load_encoder
from streamd.learning.preprocess import Preprocess
from streamd.service.snapshots import SnapshotPublisher

NO_STREAMD = '''import sys


class _NoStreamd:
    """This script must work where streamd is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "streamd":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")


sys.meta_path.insert(0, _NoStreamd())
from pathlib import Path
snapshot = Path(sys.argv[1])
'''
AFTER = '''
from safetensors.torch import load_file as _load, save_file as _save
_save({"features": features(_load(sys.argv[2])["images"]).contiguous()}, sys.argv[3])
assert not [m for m in sys.modules if m.split(".")[0] == "streamd"]
print(type(encoder).__module__, type(encoder).__name__)
'''


@pytest.mark.parametrize("arch, image_size, kwargs", [
    ("resnet_tiny", 16, {}),                     # width 16, small-image stem (3x3 conv, no max-pool)
    ("resnet18", 72, {}),                        # torchvision's own stem (7x7 stride 2, max-pool)
    ("vit_small", 16, {"num_layers": 2}),
])
def test_the_model_card_recipe_rebuilds_the_encoder_without_streamd(tmp_path, arch, image_size, kwargs):
    learner = tiny_learner(arch, image_size, encoder_kwargs=kwargs)
    manifest = SnapshotPublisher(tmp_path / "snapshots", training={"objective": "simsiam"}).publish(
        learner, reason="steps", task=0, segment=0, positions={}, probe=None)
    folder = tmp_path / "snapshots" / manifest["name"]
    card = (folder / "README.md").read_text()
    recipe = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    (tmp_path / "load.py").write_text(NO_STREAMD + recipe + AFTER)
    images = torch.randint(0, 256, (4, 3, image_size, image_size), dtype=torch.uint8)
    save_file({"images": images}, tmp_path / "images.safetensors")
    run = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(folder), str(tmp_path / "images.safetensors"),
                          str(tmp_path / "features.safetensors")], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    family = "resnet ResNet" if arch.startswith("resnet") else "vision_transformer VisionTransformer"
    assert run.stdout.strip() == f"torchvision.models.{family}"   # a plain torchvision class, no subclass
    encoder = learner.encoder.eval()
    with torch.no_grad():
        trained = encoder(Preprocess()(images))
    rebuilt = load_file(tmp_path / "features.safetensors")["features"]
    assert rebuilt.shape == trained.shape and torch.allclose(rebuilt, trained, atol=1e-5)
    assert type(load_encoder(folder)) is type(encoder.net)   # the client returns the same plain class


def test_digits_linear_probe_compares_the_snapshot_with_a_random_encoder_of_its_architecture(tmp_path):
    """An untrained snapshot built from the same seed as the random baseline scores exactly the same;
    a snapshot whose weights moved does not (the demo prints this margin)."""
    from streamd.bench._encoder_probe import digits_linear_probe
    from streamd.learning.learner import build_learner

    torch.manual_seed(0)
    untrained = build_learner("resnet_tiny", 16, device="cpu")
    pub = SnapshotPublisher(tmp_path)
    pub.publish(untrained, reason="steps", task=0, segment=0, positions={})
    same = digits_linear_probe(tmp_path, "v000001", seed=0)
    assert same["trained"] == same["random_init"] and same["margin_over_random"] == 0.0
    assert 0.5 < same["raw_pixels"] <= 1.0
    pub.publish(tiny_learner("resnet_tiny", 16), reason="steps", task=0, segment=0, positions={})
    moved = digits_linear_probe(tmp_path, "latest", seed=0)
    assert moved["snapshot"] == "v000002" and moved["trained"] != moved["random_init"]
    assert moved["random_init"] == same["random_init"] and moved["raw_pixels"] == same["raw_pixels"]


def test_a_standard_resnet_snapshot_loads_into_timm_as_its_config_says(tmp_path):
    """config.json carries timm's Hub fields for ResNets with torchvision's own stem; timm builds the
    model from them and takes model.safetensors (local file, no network) with identical features."""
    learner = tiny_learner("resnet18", 72)
    manifest = SnapshotPublisher(tmp_path).publish(learner, reason="steps", task=0, segment=0, positions={})
    folder = tmp_path / manifest["name"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["num_features"]) == ("resnet18", 0, 512)
    model = timm.create_model(config["architecture"], pretrained=True, num_classes=config["num_classes"],
                              pretrained_cfg_overlay={"file": str(folder / "model.safetensors"), "num_classes": 0})
    images = torch.randint(0, 256, (4, 3, 72, 72), dtype=torch.uint8)
    with torch.no_grad():
        trained = learner.encoder.eval()(Preprocess()(images))
        assert torch.allclose(model.eval()(Preprocess()(images)), trained, atol=1e-5)
    small = SnapshotPublisher(tmp_path / "small").publish(tiny_learner("resnet18", 32), reason="steps", task=0,
                                                          segment=0, positions={})
    assert "architecture" not in json.loads((tmp_path / "small" / small["name"] / "config.json").read_text())
