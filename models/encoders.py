"""Encoders as an ordered list of named blocks.

Every encoder runs block by block so that a prefix of blocks can be frozen (run without
autograd, BN statistics fixed) and so that per-block features can be compared between tasks.
ResNets wrap an unmodified torchvision ``ResNet`` in ``self.net``: its state dict has
torchvision's keys, which is what snapshots export.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.vision_transformer import VisionTransformer

from streamd.models.registry import Registry
from streamd.models.supermask import plain_state_dict

ENCODERS = Registry("encoder arch")


@dataclass(frozen=True)
class EncoderSpec:
    """What is needed to rebuild an encoder (stored in checkpoints and snapshot config.json)."""

    arch: str = "resnet18"
    image_size: int = 32
    in_channels: int = 3
    kwargs: dict = field(default_factory=dict)


class Encoder(nn.Module):
    """Base: subclasses fill ``self.block_names`` and implement ``block(name)``."""

    feature_dim: int
    block_names: list[str]
    architecture: dict   # every parameter of the plain torchvision module ``self.net`` (config.json)

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.frozen_blocks = 0

    def block(self, name: str) -> nn.Module:
        raise NotImplementedError

    def run_block(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.block(name)(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Turns the last block's output into the feature vector."""
        raise NotImplementedError

    def freeze_prefix(self, count: int) -> None:
        """Freezes the first ``count`` blocks: no grads, eval-mode BN, no stored activations.

        Only blocks whose status changes are touched, so flags other code set on parameters
        (e.g. ExSSNeT's phases) survive a restore that re-applies the same prefix."""
        old, self.frozen_blocks = self.frozen_blocks, count
        for i in range(min(old, count), max(old, count)):
            for p in self.block(self.block_names[i]).parameters():
                p.requires_grad_(i >= count)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.block_names[: self.frozen_blocks]:
            self.block(name).eval()
        return self

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output (for per-block similarity); the last is the head's input."""
        outs = []
        for name in self.block_names:
            x = self.run_block(name, x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        names = self.block_names
        k = self.frozen_blocks
        if k:
            with torch.no_grad():
                for name in names[:k]:
                    x = self.run_block(name, x)
        for name in names[k:]:
            x = self.run_block(name, x)
        return self.head(x)


_RESNETS = {
    "resnet18": (resnet.BasicBlock, [2, 2, 2, 2], 64),
    "resnet50": (resnet.Bottleneck, [3, 4, 6, 3], 64),
    # Small option for tests and --quick benchmarks on CPU (not for real runs).
    "resnet_tiny": (resnet.BasicBlock, [1, 1, 1, 1], 16),
}


def resnet_architecture(arch: str, image_size: int, in_channels: int = 3) -> dict:
    """Every parameter of the ResNet streamd builds, for config.json: with it a plain torchvision
    script rebuilds the same module (a small-image stem loads strictly into torchvision's default
    one too, and then computes different features, so the stem must be spelled out)."""
    block, layers, width = _RESNETS[arch]
    small = image_size <= 64   # a 3x3 stride-1 conv and no max-pool keep 32 px inputs informative
    kernel, stride = (3, 1) if small else (7, 2)
    return {"family": "resnet", "block": block.__name__, "layers": list(layers), "width": width,
            "stem": {"in_channels": in_channels, "kernel_size": kernel, "stride": stride, "padding": kernel // 2,
                     "maxpool": not small},
            "fc": "identity"}


def resnet_from_architecture(a: dict) -> resnet.ResNet:
    """A plain ``torchvision.models.resnet.ResNet`` (no subclass) shaped as ``a`` says, without the fc."""
    block, layers, width, stem = getattr(resnet, a["block"]), a["layers"], a["width"], a["stem"]
    net = resnet.ResNet(block, layers)
    if width != 64:   # torchvision fixes the base width at 64: rebuild the stem and the stages at this one
        net.inplanes = width
        net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
        for i, blocks in enumerate(layers):
            setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2 ** i, blocks, stride=1 if i == 0 else 2))
    if (stem["in_channels"], stem["kernel_size"], stem["stride"]) != (3, 7, 2):
        net.conv1 = nn.Conv2d(stem["in_channels"], width, stem["kernel_size"], stem["stride"], stem["padding"],
                              bias=False)
    if not stem["maxpool"]:
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


@ENCODERS.register("resnet18", "resnet50", "resnet_tiny")
class ResNetEncoder(Encoder):
    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        self.architecture = resnet_architecture(spec.arch, spec.image_size, spec.in_channels)
        self.net = resnet_from_architecture(self.architecture)
        last = self.net.layer4[-1]
        self.feature_dim = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
        self.block_names = ["stem", "layer1", "layer2", "layer3", "layer4"]

    def block(self, name: str) -> nn.Module:
        if name == "stem":  # a view; building it registers nothing new in the state dict
            n = self.net
            return nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool)
        return getattr(self.net, name)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(x), 1)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """torchvision keys (conv1.weight, layer1.0.bn1.running_mean, ...); a supermask encoder
        exports its active task's masked weights and statistics as a plain ResNet."""
        return plain_state_dict(self.net)


@ENCODERS.register("vit_small")
class ViTEncoder(Encoder):
    """A small torchvision ViT (patch 4 at 32 px); blocks: patch embedding, each layer."""

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        kw = {"patch_size": 4, "num_layers": 6, "num_heads": 3, "hidden_dim": 192, "mlp_dim": 768}
        kw.update(spec.kwargs)
        self.architecture = {"family": "vit", "image_size": spec.image_size, "in_channels": spec.in_channels, **kw,
                             "heads": "identity"}
        self.net = vit_from_architecture(self.architecture)
        self.feature_dim = kw["hidden_dim"]
        self.block_names = ["embed"] + [f"layer{i}" for i in range(kw["num_layers"])]

    def block(self, name: str) -> nn.Module:
        if name == "embed":
            return _ViTEmbed(self.net)
        return self.net.encoder.layers[int(name[5:])]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encoder.ln(x)[:, 0]

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()


class _ViTEmbed(nn.Module):
    """Patchify, prepend the class token, add position embeddings (torchvision's own steps)."""

    def __init__(self, net: VisionTransformer):
        super().__init__()
        self.__dict__["net"] = net  # not registered: the parameters belong to the encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._process_input(x)
        cls = net.class_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + net.encoder.pos_embedding
        return net.encoder.dropout(x)

    def parameters(self, recurse: bool = True):
        yield self.net.conv_proj.weight
        yield self.net.conv_proj.bias
        yield self.net.class_token
        yield self.net.encoder.pos_embedding


def vit_from_architecture(a: dict) -> VisionTransformer:
    """A plain torchvision ``VisionTransformer`` shaped as ``a`` says, without the classification head."""
    net = VisionTransformer(**{k: v for k, v in a.items() if k not in ("family", "in_channels", "heads")})
    if a["in_channels"] != 3:
        net.conv_proj = nn.Conv2d(a["in_channels"], a["hidden_dim"], a["patch_size"], a["patch_size"])
    net.heads = nn.Identity()
    return net


def module_from_architecture(a: dict) -> nn.Module:
    """The plain torchvision module a snapshot's config.json ``architecture`` describes."""
    return {"resnet": resnet_from_architecture, "vit": vit_from_architecture}[a["family"]](a)


def build_encoder(spec: EncoderSpec) -> Encoder:
    return ENCODERS.lookup(spec.arch)(spec)
