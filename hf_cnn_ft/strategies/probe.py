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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader

from hf_cnn_ft.config.sections import FinetuneArguments
from hf_cnn_ft.data.dataset import IMAGE_COLUMN, LABEL_COLUMN
from hf_cnn_ft.data.images import to_rgb
from hf_cnn_ft.models.anatomy import backbone_of, head_linear

logger = logging.getLogger(__name__)


@dataclass
class HeadPhaseResult:
    history: list[dict[str, float]]
    seconds: float


def pixel_batches(
    dataset: Dataset, transform: Callable, batch_size: int, channels_last: bool = False
) -> Iterator[torch.Tensor]:
    """The dataset's images, transformed and batched in order (no labels, no shuffling)."""

    def collate(rows: list[dict[str, Any]]) -> torch.Tensor:
        pixels = torch.stack([transform(to_rgb(row[IMAGE_COLUMN])) for row in rows])
        return pixels.contiguous(memory_format=torch.channels_last) if channels_last else pixels

    yield from DataLoader(dataset, batch_size=batch_size, collate_fn=collate)


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
) -> torch.Tensor:
    """What `module` receives for every image of `dataset`, in order, with the model in inference mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            inputs = [
                module_input(model, module, pixels)
                for pixels in pixel_batches(dataset, transform, batch_size, channels_last)
            ]
    finally:
        model.train(was_training)
    return torch.cat(inputs)


def extract_features(
    model: nn.Module, dataset: Dataset, transform: Callable, batch_size: int = 32, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of the classifier layer (pooled features) for every image, and the labels."""
    head = head_linear(backbone_of(model), model.config.num_labels)
    features = module_inputs(model, head, dataset, transform, batch_size, channels_last)
    labels = torch.tensor(dataset[LABEL_COLUMN], dtype=torch.long)
    return features.float().flatten(1), labels


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


def train_head(
    head: nn.Linear,
    features: torch.Tensor | BackboneFeatures,
    labels: torch.Tensor,
    args: FinetuneArguments,
    seed: int,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    loss_weights: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Trains the classifier layer on pooled features: AdamW, cosine schedule, mini-batches.

    `features` is the cached tensor, or `BackboneFeatures` to recompute every batch (same result).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.head_learning_rate, weight_decay=args.head_weight_decay)
    steps_per_epoch = math.ceil(len(features) / args.head_batch_size)
    total = max(1, steps_per_epoch * args.head_epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    loss_fn = nn.CrossEntropyLoss(weight=loss_weights)
    history = []
    started = time.perf_counter()
    head.train()
    for epoch in range(1, args.head_epochs + 1):
        order = torch.randperm(len(features), generator=generator)
        running = 0.0
        for start in range(0, len(order), args.head_batch_size):
            batch = order[start : start + args.head_batch_size]
            loss = loss_fn(head(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item() * len(batch)
        entry = {"epoch": float(epoch), "loss": running / len(features), "seconds": time.perf_counter() - started}
        if validation is not None:
            with torch.no_grad():
                logits = head(validation[0])
                entry["eval_loss"] = float(loss_fn(logits, validation[1]))
                entry["eval_accuracy"] = float((logits.argmax(1) == validation[1]).float().mean())
        history.append(entry)
    return history


def linear_probe(
    model: nn.Module,
    train_split: Dataset,
    validation_split: Dataset,
    train_transform: Callable,
    eval_transform: Callable,
    args: FinetuneArguments,
    seed: int,
    channels_last: bool = False,
    loss_weights: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Fits the new head on frozen features: one unaugmented view plus `feature_views - 1` augmented ones."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    views = [extract_features(model, train_split, eval_transform, channels_last=channels_last)]
    for _ in range(max(0, args.feature_views - 1)):
        views.append(extract_features(model, train_split, train_transform, channels_last=channels_last))
    features = torch.cat([v[0] for v in views])
    labels = torch.cat([v[1] for v in views])
    validation = extract_features(model, validation_split, eval_transform, channels_last=channels_last)
    head = head_linear(backbone_of(model), model.config.num_labels)
    history = train_head(head, features, labels, args, seed, validation, loss_weights)
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
