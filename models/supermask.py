"""Supermask layers (SupSup, Wortsman et al. 2020) as used by ExSSNeT (Yadav & Bansal 2023).

Each masked layer keeps one score tensor per task "slot"; the slot's mask is the top
``density`` fraction of |scores| in that layer, and the layer computes with ``weight * mask``.
The mask's gradient reaches the scores straight through (as if the top-k were the identity).
Normalization is non-affine and per slot, so a task's statistics never leak into another's.
A layer can also be told which weights may learn: the gradient elsewhere is cut in the forward
pass and ``reset_outside_region`` undoes whatever the optimizer (momentum, weight decay) did
there, so weights outside the region stay bit-identical.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class _TopKStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, density: float) -> torch.Tensor:
        k = max(1, int(round(density * scores.numel())))
        mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
        mask[scores.flatten().topk(k, sorted=False).indices] = 1
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def topk_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """0/1 mask of the top ``density`` fraction of |scores|; gradients pass straight through."""
    return _TopKStraightThrough.apply(scores.abs(), density)


class _Supermask:
    """What the masked Conv2d and Linear share: per-slot scores, the active slot, the learnable region."""

    weight: nn.Parameter

    def _init_supermask(self, density: float) -> None:
        self.density = density
        self.scores = nn.ParameterList()
        self.slot = 0
        self.region: torch.Tensor | None = None   # bool: weights that may change; None: all
        self.anchor: torch.Tensor | None = None   # their values outside the region
        self.add_slot()

    def add_slot(self) -> None:
        scores = torch.empty_like(self.weight, memory_format=torch.contiguous_format)
        nn.init.kaiming_uniform_(scores, a=math.sqrt(5))
        self.scores.append(nn.Parameter(scores))

    def mask(self, slot: int | None = None) -> torch.Tensor:
        return topk_mask(self.scores[self.slot if slot is None else slot], self.density)

    def restrict_learning(self, region: torch.Tensor | None) -> None:
        self.region = region
        self.anchor = None if region is None else self.weight.detach().clone()

    @torch.no_grad()
    def reset_outside_region(self) -> None:
        if self.region is not None:
            self.weight.copy_(torch.where(self.region, self.weight, self.anchor))

    def masked_weight(self) -> torch.Tensor:
        w = self.weight
        if self.region is not None:
            w = torch.where(self.region, w, w.detach())
        return w * self.mask()


class MaskedConv2d(nn.Conv2d, _Supermask):
    def __init__(self, conv: nn.Conv2d, density: float):
        if conv.bias is not None:
            raise ValueError("supermask layers have no bias (a bias would be shared by every task)")
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=False, padding_mode=conv.padding_mode,
                         device="meta")
        self.weight = conv.weight
        self._init_supermask(density)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), None)


class MaskedLinear(nn.Linear, _Supermask):
    def __init__(self, linear: nn.Linear, density: float):
        if linear.bias is not None:
            raise ValueError("supermask layers have no bias (a bias would be shared by every task)")
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = linear.weight
        self._init_supermask(density)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight())


class MultitaskBatchNorm2d(nn.Module):
    """One non-affine BatchNorm2d per slot; only the active slot's statistics are used and updated."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.norms = nn.ModuleList([nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, affine=False,
                                                   device=bn.running_mean.device)])
        self.slot = 0

    def add_slot(self) -> None:
        norm = copy.deepcopy(self.norms[0])
        norm.reset_running_stats()
        self.norms.append(norm)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.slot](x)


SLOTTED = (MaskedConv2d, MaskedLinear, MultitaskBatchNorm2d)


def to_supermask(module: nn.Module, density: float = 0.1) -> nn.Module:
    """Swaps every Conv2d, Linear and BatchNorm2d inside ``module`` for its slotted version, in place.

    Weights are kept (they become the shared weights all masks select from); BN affine
    parameters are dropped. Anything else with parameters is refused, since it would be shared
    by all tasks unmasked.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, MaskedConv2d(child, density))
        elif isinstance(child, nn.Linear):
            setattr(module, name, MaskedLinear(child, density))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, MultitaskBatchNorm2d(child))
        else:
            to_supermask(child, density)
    unmasked = [n for n, _ in module.named_parameters(recurse=False)]
    if unmasked:
        raise NotImplementedError(f"{type(module).__name__} has parameters {unmasked} no supermask covers")
    return module


def slotted_layers(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, SLOTTED)]


def masked_layers(module: nn.Module) -> list[_Supermask]:
    return [m for m in module.modules() if isinstance(m, _Supermask)]


def num_slots(module: nn.Module) -> int:
    return len(masked_layers(module)[0].scores)


def add_slot(module: nn.Module) -> int:
    """Adds one slot to every slotted layer; returns its index."""
    for m in slotted_layers(module):
        m.add_slot()
    return num_slots(module) - 1


def use_slot(module: nn.Module, slot: int) -> None:
    for m in slotted_layers(module):
        m.slot = slot


@torch.no_grad()
def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict as the unslotted module it was made from would have it, for the
    active slot: masked layers give ``weight * mask`` and each non-affine BN its slot's statistics
    with weight 1 and bias 0, so a plain network (a torchvision ResNet) loads it strictly and
    computes what the active slot computes. A module without slotted layers gives its state dict."""
    state = module.state_dict()
    for prefix, m in module.named_modules():
        if not isinstance(m, SLOTTED):
            continue
        p = f"{prefix}." if prefix else ""
        for key in [k for k in state if k.startswith(p + "scores.") or k.startswith(p + "norms.")]:
            del state[key]
        if isinstance(m, MultitaskBatchNorm2d):
            norm = m.norms[m.slot]
            state[p + "weight"] = torch.ones_like(norm.running_mean)
            state[p + "bias"] = torch.zeros_like(norm.running_mean)
            for name, buffer in norm.named_buffers():
                state[p + name] = buffer.clone()
        else:
            state[p + "weight"] = m.weight * m.mask()
    return state
