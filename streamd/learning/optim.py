"""Optimizers (SGD, LARS, AdamW) and LR schedules (warmup + cosine, or constant for endless streams)."""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")   # a typo in [optim] fails at start, like every other section
    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    total_steps: int = 0           # cosine only
    clip_grad_norm: float | None = None


class LARS(torch.optim.SGD):
    """SGD with layer-wise trust ratios; biases and norm parameters (1-D) are left unadapted."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta: float = 0.02):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=0.0)
        self.eta, self.lars_weight_decay = eta, weight_decay

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.ndim == 1:
                    continue
                p.grad.add_(p, alpha=self.lars_weight_decay)
                w_norm, g_norm = torch.linalg.norm(p), torch.linalg.norm(p.grad)
                ratio = torch.where((w_norm > 0) & (g_norm > 0), self.eta * w_norm / g_norm, torch.ones_like(w_norm))
                p.grad.mul_(ratio)
        return super().step(closure)


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant" or cfg.total_steps <= cfg.warmup_steps:
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / (cfg.total_steps - cfg.warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
