"""Gradual unfreezing: which stages train in which epoch, and a learning rate that restarts with them.

A plan maps every epoch to the stages frozen during it. `UnfreezeCallback` applies the plan at the
start of each epoch, so a run resumed from a checkpoint applies exactly the stages of the epoch it
resumes in.

Under DDP the trainable set must not change after the model is wrapped: DDP registers gradient
hooks only for parameters that require grad at wrapping time, so a stage unfrozen later would train
on each rank without its gradients being averaged, and the ranks would drift apart. With several
processes, a scheduled freeze therefore keeps `requires_grad` and instead drops the frozen
parameters' gradients after every backward pass (they receive no update, no weight decay and no
optimizer state); BatchNorm in frozen stages stays in inference mode either way.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import TrainerCallback

from hf_cnn_ft.config.sections import FinetuneArguments
from hf_cnn_ft.models.anatomy import stages
from hf_cnn_ft.strategies.freezing import apply_freezing, frozen_stage_names

logger = logging.getLogger(__name__)


@dataclass
class UnfreezePlan:
    """The frozen stages of every epoch. `changes` are the epochs (> 0) where the set changes."""

    frozen_at: Callable[[int], list[str]]
    changes: list[int] = field(default_factory=list)


def build_plan(model: nn.Module, finetune: FinetuneArguments, num_epochs: int) -> UnfreezePlan | None:
    """The plan that `finetune.unfreeze` describes, validated against the model's stages; None: no schedule."""
    schedule = finetune.unfreeze or "none"
    if schedule == "none":
        return None
    backbone = list(stages(model))[:-1]
    every = finetune.unfreeze_epochs
    if schedule == "head_then_all":
        initial = frozen_stage_names(model, finetune.freeze) or backbone

        def frozen_at(epoch: int) -> list[str]:
            return initial if epoch < every else []

    elif schedule == "one_per_epochs":
        # The top stage trains from the start (the head was fitted first: linear probe or a frozen
        # epoch); every `every` epochs the next stage down joins it. The stages `freeze` names never do.
        kept = len(frozen_stage_names(model, finetune.freeze))

        def frozen_at(epoch: int) -> list[str]:
            return backbone[: max(kept, len(backbone) - 1 - epoch // every)]

    else:
        milestones = _parse_milestones(model, finetune)

        def frozen_at(epoch: int) -> list[str]:
            current = frozen_stage_names(model, finetune.freeze)
            for start, frozen in milestones:
                if epoch >= start:
                    current = frozen
            return current

    changes = [e for e in range(1, max(1, num_epochs)) if frozen_at(e) != frozen_at(e - 1)]
    return UnfreezePlan(frozen_at, changes)


def _parse_milestones(model: nn.Module, finetune: FinetuneArguments) -> list[tuple[int, list[str]]]:
    """{epoch: freeze} as (epoch, frozen stages), in order; the recipe settled both at load."""
    return sorted((epoch, frozen_stage_names(model, value)) for epoch, value in finetune.unfreeze_milestones.items())


def fingerprint(model: nn.Module) -> str:
    """A digest of every parameter and buffer: equal digests, identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _epoch_index(epoch: float | None) -> int:
    """The epoch that `state.epoch` lies in: 2.0 and 2.5 (a run resumed mid-epoch) are both epoch 2, and the
    float sum 2.9999999 that ends epoch 2 is epoch 3."""
    return math.floor((epoch or 0) + 1e-6)


class UnfreezeCallback(TrainerCallback):
    """Applies an `UnfreezePlan` at the start of every epoch (and of a resumed run)."""

    def __init__(self, plan: UnfreezePlan, bn_policy: str, masked: bool) -> None:
        self.plan, self.bn_policy, self.masked = plan, bn_policy, masked
        self.current: list[str] | None = None
        self.stage_names: list[str] = []
        self.furthest_epoch = 0
        self.masked_parameters: list[torch.nn.Parameter] = []

    @property
    def history(self) -> list[dict[str, object]]:
        """The stages trained from each change on, up to the furthest epoch reached. Derived from the plan,
        so a resumed run records what an uninterrupted one does."""
        epochs = [0, *(e for e in self.plan.changes if e <= self.furthest_epoch)]
        return [
            {"epoch": e, "training": [s for s in self.stage_names if s not in self.plan.frozen_at(e)]} for e in epochs
        ]

    def apply(self, model: nn.Module, epoch: int) -> None:
        self.stage_names = list(stages(model))
        self.furthest_epoch = max(self.furthest_epoch, epoch)
        frozen = self.plan.frozen_at(epoch)
        if frozen == self.current:
            return
        frozen_names = apply_freezing(model, frozen, self.bn_policy, keep_requires_grad=self.masked)
        named = dict(model.named_parameters())
        self.masked_parameters = [named[n] for n in sorted(frozen_names)] if self.masked else []
        self.current = frozen
        logger.info("epoch %d: training %s", epoch, ", ".join(s for s in self.stage_names if s not in frozen))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.apply(model, _epoch_index(state.epoch))

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self.apply(model, _epoch_index(state.epoch))


def restarting_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    boundaries: list[int],
    warmup: Callable[[int], int],
    shape: str,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup then cosine (or linear) decay within each phase between unfreezing steps.

    Like fastai's `fine_tune` (one cycle for the head, a new one after unfreezing): freshly unfrozen
    stages start at a low learning rate instead of meeting the peak of a schedule already under way.
    The multiplier applies to each group's own rate, so per-stage rates keep their ratios.
    """
    edges = [0, *[b for b in boundaries if 0 < b < total_steps], total_steps]

    def factor(step: int) -> float:
        index = max(i for i in range(len(edges) - 1) if edges[i] <= min(step, total_steps - 1))
        start, end = edges[index], edges[index + 1]
        length, position = max(1, end - start), step - start
        warm = warmup(length)
        if position < warm:
            return (position + 1) / (warm + 1)
        progress = min(1.0, (position - warm) / max(1, length - warm))
        return 0.5 * (1 + math.cos(math.pi * progress)) if shape == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
