"""The cached probe: the new head trained on frozen features computed once (Kumar et al. 2022, LP-FT).

The linear-probe phase trains only the new head on pooled backbone features computed once
(optionally on K augmented views): seconds instead of one backbone pass per epoch. Fine-tuning
from a probed head rather than a random one distorts pretrained features less (Kumar et al.
2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from hf_cnn_ft.config.sections import FinetuneArguments
from hf_cnn_ft.data.dataset import LABEL_COLUMN, is_multi_label, split_labels, split_targets
from hf_cnn_ft.data.inputs import pixel_batches
from hf_cnn_ft.models.anatomy import backbone_of, head_linear
from hf_cnn_ft.models.decisions import per_image_correct
from hf_cnn_ft.models.precision import autocast
from hf_cnn_ft.strategies.shared_features import shared_or_computed

if TYPE_CHECKING:  # built in training, read by strategies/extra_signal.py
    from hf_cnn_ft.strategies.extra_signal import ExtraSignal

logger = logging.getLogger(__name__)
MacroF1 = Callable[[np.ndarray, np.ndarray, int], float]


class _InputCaptured(Exception):
    """Ends a forward pass once a module's input is captured: the rest is not needed."""


def module_input(model: nn.Module, module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What `module` receives for one batch of images (the caller sets the mode and grad)."""
    captured: list[torch.Tensor] = []

    def capture(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().clone())
        raise _InputCaptured

    handle = module.register_forward_pre_hook(capture)
    try:
        model(pixel_values=pixels)
    except _InputCaptured:
        pass
    finally:
        handle.remove()
    return captured[0]


def module_inputs(
    model: nn.Module,
    module: nn.Module,
    dataset: Dataset,
    transform: Callable,
    batch_size: int = 32,
    channels_last: bool = False,
    precision: str = "fp32",
    progress: str | None = None,
) -> torch.Tensor:
    """What `module` receives for every image of `dataset`, in order, with the model in inference mode and in
    `precision` (returned as float32); `progress` names a progress bar over the batches (None: no bar)."""
    was_training = model.training
    model.eval()
    batches = pixel_batches(dataset, transform, batch_size, channels_last)
    if progress is not None:
        batches = tqdm(batches, desc=progress, total=math.ceil(len(dataset) / batch_size), unit="batch")
    try:
        with torch.inference_mode(), autocast(precision):
            device = next(model.parameters()).device  # the CPU before training, the run's device after it
            inputs = [module_input(model, module, pixels.to(device)).cpu() for pixels in batches]
    finally:
        model.train(was_training)
    return torch.cat(inputs).float()


def pooled_features(
    model: nn.Module,
    dataset: Dataset,
    transform: Callable,
    batch_size: int = 32,
    channels_last: bool = False,
    precision: str = "fp32",
    progress: str | None = None,
) -> torch.Tensor:
    """The inputs of the classifier layer (pooled features) for every image."""
    head = head_linear(backbone_of(model), model.config.num_labels)
    return module_inputs(model, head, dataset, transform, batch_size, channels_last, precision, progress).flatten(1)


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    transform: Callable,
    batch_size: int = 32,
    channels_last: bool = False,
    precision: str = "fp32",
    progress: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled features of every image, and the labels."""
    features = pooled_features(model, dataset, transform, batch_size, channels_last, precision, progress)
    return features, label_tensor(dataset)


def label_tensor(dataset: Dataset) -> torch.Tensor:
    """The labels as a probe's loss takes them: class indices, or of a multi-label split multi-hot float rows."""
    if is_multi_label(dataset.features[LABEL_COLUMN]):
        return torch.from_numpy(split_targets(dataset))
    return torch.tensor(split_labels(dataset), dtype=torch.long)


def supervised_loss(loss_weights: torch.Tensor | None, multi_label: bool) -> nn.Module:
    """A probe's loss: cross-entropy over the classes, or one binary cross-entropy per label (`loss_weights`
    weighting each label's positives)."""
    return nn.BCEWithLogitsLoss(pos_weight=loss_weights) if multi_label else nn.CrossEntropyLoss(weight=loss_weights)


class BackboneFeatures:
    """Features computed by running the frozen backbone on demand: the uncached reference path.

    Indexing it like the cached tensor (``features[indices]``) runs the backbone on those images,
    so `train_head` can be run both ways and the cache shown to change nothing but the time.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, transform: Callable, channels_last: bool = False):
        self.model, self.dataset, self.transform, self.channels_last = model, dataset, transform, channels_last

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        rows = self.dataset.select(indices.tolist())
        features, _ = extract_features(self.model, rows, self.transform, len(rows), self.channels_last)
        return features


@dataclass
class ProbeInputs:
    """What a probe phase trains on: the splits, their transforms and the run's probe settings."""

    train_split: Dataset
    validation_split: Dataset
    train_transform: Callable
    eval_transform: Callable
    finetune: FinetuneArguments
    seed: int
    channels_last: bool = False
    loss_weights: torch.Tensor | None = None
    train_batchnorm: bool = False  # whether BatchNorm in the probed stages trains (stage probe only)
    epoch_end: Callable[[dict[str, float]], None] = lambda entry: None  # hears each epoch (tune prunes on it)
    features_key: str | None = None  # set while a search shares frozen features between its trials
    signal: ExtraSignal | None = None  # unlabeled images and teachers (strategies/extra_signal.py)
    precision: str = "fp32"  # the frozen features are computed in it (training.precision, settled)
    # (references, predictions, classes) -> macro-F1: the evaluation's own definition, handed down by training (of
    # a multi-label run, on multi-hot rows)
    macro_f1: MacroF1 | None = None
    progress: bool = False  # a progress bar over the feature pass (training.disable_tqdm turns it off)

    def hooks(self, **changes: Any) -> ProbeHooks:
        """The probe loop's hooks for this phase: each epoch heard and scored as the run scores."""
        return ProbeHooks(**{"epoch_end": self.epoch_end, "macro_f1": self.macro_f1, **changes})


def fit_on_cache(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor | BackboneFeatures,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    finetune: FinetuneArguments,
    seed: int,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_weights: torch.Tensor | None = None,
    hooks: ProbeHooks | None = None,
) -> list[dict[str, float]]:
    """The probe loop, shared by the linear and the stage probe: `head_epochs` shuffled passes of
    `head_batch_size` over cached inputs, then a validation pass per epoch. Returns the history."""
    hooks = hooks or ProbeHooks()
    generator = torch.Generator().manual_seed(seed)
    loss_fn = supervised_loss(loss_weights, labels.is_floating_point())
    objective = hooks.objective or (lambda logits, batch: loss_fn(logits, labels[batch]))
    rows = hooks.rows_per_epoch or len(inputs)
    history = []
    started = time.perf_counter()
    for epoch in range(1, finetune.head_epochs + 1):
        hooks.train_mode()
        hooks.epoch_begin()
        order = torch.cat([torch.randperm(len(inputs), generator=generator) for _ in range(-(-rows // len(inputs)))])
        order = order[:rows]
        running = 0.0
        for start in range(0, len(order), finetune.head_batch_size):
            batch = order[start : start + finetune.head_batch_size]
            loss = objective(forward(inputs[batch]), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item() * len(batch)
        entry = {"epoch": float(epoch), "loss": running / len(order), "seconds": time.perf_counter() - started}
        if validation is not None:
            with torch.no_grad():
                logits = (hooks.validation_logits or forward)(validation[0])
            entry["eval_loss"] = float(loss_fn(logits, validation[1]))
            entry["eval_accuracy"] = float(per_image_correct(logits.numpy(), validation[1].numpy()).mean())
            if hooks.macro_f1 is not None:
                predicted = (logits > 0).float() if validation[1].is_floating_point() else logits.argmax(1)
                entry["eval_f1_macro"] = hooks.macro_f1(validation[1].numpy(), predicted.numpy(), logits.shape[1])
        history.append(entry)
        hooks.epoch_end(entry)
    return history


@dataclass
class ProbeHooks:
    """Where the stage probe differs from the linear one: module modes per epoch, batched validation."""

    train_mode: Callable[[], None] = lambda: None
    validation_logits: Callable[[torch.Tensor], torch.Tensor] | None = None
    epoch_end: Callable[[dict[str, float]], None] = lambda entry: None
    epoch_begin: Callable[[], None] = lambda: None
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (logits, rows) -> loss
    rows_per_epoch: int | None = None  # labelled rows drawn per epoch (repeated when an epoch is longer)
    macro_f1: MacroF1 | None = None  # without it, an epoch records accuracy and loss only


def steps_of(count: int, finetune: FinetuneArguments) -> int:
    """Optimizer steps of a probe over `count` cached rows."""
    return max(1, math.ceil(count / finetune.head_batch_size) * finetune.head_epochs)


def train_head(
    head: nn.Linear,
    features: torch.Tensor | BackboneFeatures,
    labels: torch.Tensor,
    finetune: FinetuneArguments,
    seed: int,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_weights: torch.Tensor | None = None,
    hooks: ProbeHooks | None = None,
) -> list[dict[str, float]]:
    """Trains the classifier layer on pooled features: AdamW, cosine schedule, mini-batches.

    `features` is the cached tensor, or `BackboneFeatures` to recompute every batch (same result).
    """
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=finetune.head_learning_rate, weight_decay=finetune.head_weight_decay
    )
    rows = (hooks.rows_per_epoch if hooks else None) or len(features)
    schedule = get_cosine_schedule_with_warmup(optimizer, 0, steps_of(rows, finetune))
    head.train()
    return fit_on_cache(head, features, labels, optimizer, schedule, finetune, seed, validation, loss_weights, hooks)


def _view_features(model: nn.Module, probe: ProbeInputs, view: int | str) -> tuple[torch.Tensor, torch.Tensor]:
    """View 0: the training images unaugmented; view k: augmented, seeded by k (so a view is the same
    whether or not the ones before it were computed); "validation": the validation images."""
    dataset = probe.validation_split if view == "validation" else probe.train_split
    transform = probe.train_transform if isinstance(view, int) and view > 0 else probe.eval_transform

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        if transform is probe.train_transform:
            torch.manual_seed(probe.seed + int(view) - 1)
        named = "validation images" if view == "validation" else "training images" + (f", view {view}" if view else "")
        progress = f"probe: features of the {named}" if probe.progress else None
        return extract_features(
            model, dataset, transform, channels_last=probe.channels_last, precision=probe.precision, progress=progress
        )

    return shared_or_computed(probe.features_key, str(view), compute)


def linear_probe(model: nn.Module, probe: ProbeInputs) -> list[dict[str, float]]:
    """Fits the new head on frozen features: one unaugmented view plus `feature_views - 1` augmented ones."""
    args = probe.finetune
    started = time.perf_counter()
    views = [_view_features(model, probe, view) for view in range(max(1, args.feature_views))]
    features = torch.cat([v[0] for v in views])
    labels = torch.cat([v[1] for v in views])
    validation = _view_features(model, probe, "validation")
    head = head_linear(backbone_of(model), model.config.num_labels)
    hooks = probe.hooks()
    history = train_head(head, features, labels, args, probe.seed, validation, probe.loss_weights, hooks)
    extraction = time.perf_counter() - started - (history[-1]["seconds"] if history else 0.0)
    for entry in history:  # seconds since the probe started, feature extraction included
        entry["seconds"] += extraction
    last = history[-1] if history else {}
    logger.info(
        "linear probe: %d epochs on %d cached feature rows, validation accuracy %.3f",
        args.head_epochs,
        len(features),
        last.get("eval_accuracy", float("nan")),
    )
    return history
