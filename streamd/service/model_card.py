"""README.md of a snapshot: what the encoder was trained on, its lineage, its probe figures, and how
to load it, with and without streamd.

The plain-torchvision recipe is code a downstream team can paste: it reads only config.json and
model.safetensors, so a snapshot outlives streamd's own classes (a test runs it where streamd cannot
be imported).
"""
from __future__ import annotations

import json

CARD = "README.md"

_RESNET = '''\
def build(a):  # config.json["module"], family "resnet"
    block = getattr(resnet, a["block"])
    net = resnet.ResNet(block, a["layers"])
    width, stem = a["width"], a["stem"]
    net.inplanes = width
    net.conv1 = nn.Conv2d(stem["in_channels"], width, stem["kernel_size"], stem["stride"], stem["padding"],
                          bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    for i, blocks in enumerate(a["layers"]):
        setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2 ** i, blocks, stride=1 if i == 0 else 2))
    if not stem["maxpool"]:
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net
'''

_VIT = '''\
def build(a):  # config.json["module"], family "vit"
    net = VisionTransformer(**{k: v for k, v in a.items() if k not in ("family", "in_channels", "heads")})
    if a["in_channels"] != 3:
        net.conv_proj = nn.Conv2d(a["in_channels"], a["hidden_dim"], a["patch_size"], a["patch_size"])
    net.heads = nn.Identity()
    return net
'''

_LOAD = '''\
config = json.loads((snapshot / "config.json").read_text())
encoder = build(config["module"])
encoder.load_state_dict(load_file(snapshot / "model.safetensors"), strict=True)
encoder.eval()
pre = config["preprocessing"]
mean, std = torch.tensor(pre["mean"]).view(1, -1, 1, 1), torch.tensor(pre["std"]).view(1, -1, 1, 1)


def features(images_uint8):
    """uint8 N x C x S x S with S = pre["image_size"] (streamd resizes with Pillow's bilinear filter)."""
    with torch.no_grad():
        return encoder((images_uint8.float() / 255 - mean) / std)
'''


def load_recipe(architecture: dict) -> str:
    """Python that defines ``encoder`` and ``features()`` from a folder ``snapshot`` (a Path)."""
    imports = ("import json\n\nimport torch\nfrom safetensors.torch import load_file\nfrom torch import nn\n"
               + ("from torchvision.models import resnet\n" if architecture["family"] == "resnet" else
                  "from torchvision.models.vision_transformer import VisionTransformer\n"))
    build = _RESNET if architecture["family"] == "resnet" else _VIT
    return f"{imports}\n\n{build}\n\n{_LOAD}"


def _timm_line(config: dict) -> str:
    """For a ResNet with torchvision's own stem, config.json has timm's Hub fields too."""
    if "architecture" not in config:
        return ""
    return (f"With timm: `timm.create_model(\"{config['architecture']}\", pretrained=True, num_classes=0, "
            f"pretrained_cfg_overlay={{\"file\": \"model.safetensors\", \"num_classes\": 0}})`.\n\n")


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(manifest: dict, config: dict, training: dict) -> str:
    probe = manifest.get("probe") or {}
    rows = "".join(f"| {name} | {value} |\n" for name, value in probe.items() if not isinstance(value, dict))
    per_task = {name: value for name, value in probe.items() if isinstance(value, dict)}
    rows += "".join(f"| {name} | {', '.join(f'task {t}: {_figure(v)}' for t, v in values.items())} |\n"
                    for name, values in per_task.items() if values)
    frozen = manifest["frozen_blocks"]
    return f"""# streamd encoder {manifest['name']}

A self-supervised image encoder published by streamd {manifest['libraries']['streamd']} from a live stream.
Weights: `model.safetensors` (torchvision parameter names; the encoder only, `fc`/`heads` are identity).
Architecture and preprocessing: `config.json`. Checksums, positions and probe figures: `manifest.json`.

## Training
- architecture: {config['arch']} at {config['image_size']} px, {config['in_channels']} input channels, {config['feature_dim']}-d features
- objective: {training.get('objective', '?')}; continual-learning strategy: {training.get('strategy', '?')}
- source: {training.get('source', '?')}
- task {manifest['task']} (segment {manifest['segment']}), step {manifest['step']}, published for `{manifest['reason']}` at {manifest['created_at']}
- frozen blocks at publish time: {frozen['count']} {frozen['names']}

## Lineage
- parent: {manifest['parent'] or 'none (first version)'}
- source positions covered: `{json.dumps(manifest['positions'])}`

## Probe (kNN on held-out stream images; empty without labels)
| metric | value |
| --- | --- |
{rows or '| (none yet) | |' + chr(10)}
## Load it
With streamd's client (verifies the sha256 of every file):

```
from streamd.client import load_encoder
encoder = load_encoder("http://HOST:9400", version="{manifest['name']}", token=...)
```

{_timm_line(config)}With torch and torchvision only (`snapshot` is this folder as a `pathlib.Path`):

```python
{load_recipe(config['module'])}```
"""
