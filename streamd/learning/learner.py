"""The learner: one SSL step per batch, with continual-learning plugins around it.

It owns the objective (encoder + heads), the optimizer and the schedule; the plugins add replay,
mixing, distillation, regularization and freezing through their hooks. Its whole state,
RNG included, saves and restores so that a restored learner takes the same next step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from streamd.models.encoders import EncoderSpec, build_encoder
from streamd.models.objectives import Objective, ObjectiveOutput, build_objective
from streamd.learning.augment import TwoViewAugment
from streamd.learning.preprocess import Preprocess
from streamd.learning.optim import OptimConfig, build_optimizer, build_scheduler
from streamd.learning.plugins import Plugin, TaskMasks, build_plugins
from streamd.learning.plugins.context import Batch, PluginContext


@dataclass
class StepResult:
    loss: float
    skipped: bool = False
    terms: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Learner:
    def __init__(self, objective: Objective, augment: TwoViewAugment, plugins: list[Plugin],
                 optim: OptimConfig | None = None, device: str = "auto", amp: str = "auto",
                 channels_last: bool | None = None, compile: bool = False):
        self.device = resolve_device(device)
        self.objective = objective.to(self.device)
        self.encoder = objective.encoder
        self.augment = augment.to(self.device)
        self.preprocess = Preprocess().to(self.device)
        self.plugins = plugins
        self.context = PluginContext(self)          # all that the plugins' hooks see
        self.task_masks = next((p for p in plugins if isinstance(p, TaskMasks)), None)
        self.optim_cfg = optim or OptimConfig()
        on_gpu = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (amp == "bf16" or (amp == "auto" and on_gpu)) else None
        self.channels_last = on_gpu if channels_last is None else channels_last
        if self.channels_last:
            self.objective.to(memory_format=torch.channels_last)
        self.step_count = 0
        self.task = -1
        self.nonfinite_steps = 0
        self._task_ended = False
        self.last_batch_rows = 0          # rows of the last step after replay (FLOP accounting)
        for p in plugins:
            p.setup(self.context)
        self.optimizer = build_optimizer(self.trainable_parameters(), self.optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.optim_cfg)
        self._forward = torch.compile(self.objective) if compile else self.objective

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.objective.parameters())
        for p in self.plugins:
            for m in p.trainable_modules():
                params += list(m.to(self.device).parameters())
        return params

    def rebuild_optimizer(self) -> None:
        """After a plugin changes which parameters exist (e.g. ExSSNeT swaps layers)."""
        self.optimizer = build_optimizer(self.trainable_parameters(), self.optim_cfg)
        sched_state = self.scheduler.state_dict()
        self.scheduler = build_scheduler(self.optimizer, self.optim_cfg)
        self.scheduler.load_state_dict(sched_state)
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # a new LambdaLR starts at factor(0); keep the schedule's position

    def plugin(self, name: str) -> Plugin | None:
        return next((p for p in self.plugins if p.name == name), None)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # Tasks ---------------------------------------------------------------------------------
    def begin_task(self, task: int) -> None:
        """Ends the current task (if any) and starts ``task``: the plugins' boundary hooks."""
        if task == self.task:
            return
        self.end_task()
        self.task = task
        for p in self.plugins:
            p.on_task_start(self.context, task)

    def end_task(self) -> None:
        if self.task >= 0 and not self._task_ended:
            for p in self.plugins:
                p.on_task_end(self.context, self.task)
        self._task_ended = True

    # Training ------------------------------------------------------------------------------
    def make_batch(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                   tasks: torch.Tensor | None = None) -> Batch:
        n = images.shape[0]
        images = images.to(self.device, non_blocking=True)
        labels = torch.full((n,), -1, dtype=torch.long) if labels is None else labels.long()
        tasks = torch.full((n,), max(self.task, 0), dtype=torch.long) if tasks is None else tasks.long()
        return Batch(images, labels.to(self.device), tasks.to(self.device), n)

    def views_of(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v1, v2 = self.augment(images)
        if self.channels_last:
            v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
        return v1, v2

    def step(self, images: torch.Tensor, labels: torch.Tensor | None = None,
             tasks: torch.Tensor | None = None) -> StepResult:
        if self.task < 0:
            self.begin_task(0)
        if images.shape[0] == 1:    # batch norm needs two samples: one image trains as two augmented copies
            images = images.repeat(2, 1, 1, 1)
            labels = None if labels is None else labels.repeat(2)
            tasks = None if tasks is None else tasks.repeat(2)
        self._task_ended = False
        self.objective.train()
        batch = self.make_batch(images, labels, tasks)
        batch.views = self.views_of(batch.images)
        with self.autocast():
            for p in self.plugins:
                batch = p.before_step(self.context, batch)
            self.last_batch_rows = len(batch.images)
            out: ObjectiveOutput = self._forward(*batch.views)
            terms = {"ssl": out.loss}
            for p in self.plugins:
                terms.update(p.extra_loss(self.context, batch, out))
            total = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(total)):
            self.nonfinite_steps += 1
            return StepResult(float(total.detach()), skipped=True)
        total.backward()
        if self.optim_cfg.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.trainable_parameters(), self.optim_cfg.clip_grad_norm)
        self._finish_step(batch, out)
        return StepResult(float(total.detach()), terms={k: float(v.detach()) for k, v in terms.items()})

    def step_without_rows(self) -> None:
        """This process's part of a step that other data-parallel ranks' rows drive: no loss of its
        own (the optimizer's gradients come from the others), then the same tail as ``step``, so
        step-counted plugin state (phases, resets, schedules) stays identical on every rank."""
        self._task_ended = False
        self.optimizer.zero_grad(set_to_none=True)
        size = self.augment.image_size
        empty = self.make_batch(torch.zeros((0, 3, size, size), dtype=torch.uint8))
        self._finish_step(empty, None)

    def _finish_step(self, batch: Batch, out: ObjectiveOutput | None) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.objective.after_optimizer_step()
        for p in self.plugins:
            p.after_step(self.context, batch, out)
        self.step_count += 1

    # Inference -----------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, task: int | None = None, batch_size: int = 512,
              encoder: nn.Module | None = None) -> torch.Tensor:
        """Encoder features of uint8 images (eval mode, no augmentation), on the CPU.

        With per-task masks, ``task`` picks the mask (a task not seen yet uses the current one);
        without, it changes nothing."""
        if task is None or self.task_masks is None:
            return self._features(images, batch_size, encoder or self.encoder)
        self.task_masks.use_task(self.context, min(task, self.task))
        try:
            return self._features(images, batch_size, encoder or self.encoder)
        finally:
            self.task_masks.use_task(self.context, self.task)

    def infer_task(self, images: torch.Tensor) -> int | None:
        """The known task a batch of images most likely comes from; None without per-task masks."""
        return None if self.task_masks is None else self.task_masks.infer_task(self.context, images)

    @torch.no_grad()
    def _features(self, images: torch.Tensor, batch_size: int, encoder: nn.Module) -> torch.Tensor:
        was_training = encoder.training
        encoder.eval()
        feats = []
        for chunk in images.split(batch_size):
            x = self.preprocess(chunk.to(self.device))
            with self.autocast():
                feats.append(encoder(x).float().cpu())
        encoder.train(was_training)
        return torch.cat(feats) if feats else torch.zeros(0, self.encoder.feature_dim)

    # State ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "plugins": {p.name: p.state_dict() for p in self.plugins},
            "rng": rng,
            "counters": {"step": self.step_count, "task": self.task, "nonfinite": self.nonfinite_steps,
                         "frozen_blocks": self.encoder.frozen_blocks,
                         "task_ended": self._task_ended},
        }

    def load_state_dict(self, state: dict) -> None:
        c = state["counters"]
        self.step_count, self.task, self.nonfinite_steps = c["step"], c["task"], c["nonfinite"]
        self._task_ended = c["task_ended"]
        for p in self.plugins:  # first: plugins may rebuild modules the weights then fill
            p.load_state_dict(state["plugins"].get(p.name, {}))
        self.encoder.freeze_prefix(c["frozen_blocks"])
        self.objective.load_state_dict(state["objective"])
        if len(self.optimizer.param_groups[0]["params"]) != len(state["optimizer"]["param_groups"][0]["params"]):
            self.rebuild_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for p in self.plugins:
            p.after_restore(self.context)


def build_learner(arch: str = "resnet18", image_size: int = 32, objective: str = "simsiam",
                  strategy: str = "finetune", objective_kwargs: dict | None = None,
                  plugin_options: dict[str, dict] | None = None, augment_kwargs: dict | None = None,
                  encoder_kwargs: dict | None = None, **learner_kwargs) -> Learner:
    """One call from configuration values to a ready learner."""
    encoder = build_encoder(EncoderSpec(arch, image_size, kwargs=encoder_kwargs or {}))
    obj = build_objective(objective, encoder, **(objective_kwargs or {}))
    augment = TwoViewAugment(image_size, **(augment_kwargs or {}))
    return Learner(obj, augment, build_plugins(strategy, plugin_options), **learner_kwargs)
