"""Which parameters train, and how: stages, freezing, frozen BatchNorm, the linear-probe phase.

A backbone is split into named stages from stem to head. Freezing a stage stops its parameters
AND keeps its BatchNorm layers in inference mode, even though the Trainer calls `model.train()`
every step (a forward pre-hook switches them back), so running statistics stay untouched.

The linear-probe phase trains only the new head on pooled backbone features computed once
(optionally on K augmented views): seconds instead of one backbone pass per epoch. Fine-tuning
from a probed head rather than a random one distorts pretrained features less (Kumar et al.
2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution").
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader

from .data import IMAGE_COLUMN, LABEL_COLUMN, to_rgb
from .errors import UserError
from .models import head_linear, is_timm_model
from .recipe import FinetuneArguments

logger = logging.getLogger(__name__)

STRATEGIES = ("full", "linear_probe", "two_phase", "gradual")
PROBING_STRATEGIES = ("linear_probe", "two_phase", "gradual")
BN_POLICIES = ("auto", "train", "frozen", "frozen_in_frozen_stages")
_NUMBERED = re.compile(r"(^|\.)(stages|blocks|layer|layers|features)\.(\d+)\.")
BATCHNORM = (nn.modules.batchnorm._BatchNorm,)


def _backbone(model: nn.Module) -> nn.Module:
    return model.timm_model if is_timm_model(model) else model


def stages(model: nn.Module) -> "OrderedDict[str, list[str]]":
    """Parameter names grouped into stages, stem first, head last (names as in `model`)."""
    backbone = _backbone(model)
    prefix = "timm_model." if is_timm_model(model) else ""
    head = head_linear(backbone, model.config.num_labels)
    head_names = {
        f"{name}.{p}"
        for name, module in backbone.named_modules()
        if module is head
        for p, _ in module.named_parameters()
    }
    groups: OrderedDict[str, list[str]] = OrderedDict()
    if is_timm_model(model) and hasattr(backbone, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(backbone, backbone.group_matcher(coarse=True))
        ordered = sorted(grouped)
        for position, key in enumerate(ordered):
            names = [n for n in grouped[key] if n not in head_names]
            if not names:
                continue
            label = "stem" if position == 0 else f"stage{position}"
            groups[label] = [prefix + n for n in names]
    else:
        current = "stem"
        for name, _ in backbone.named_parameters():
            if name in head_names:
                continue
            # Parameters before the first numbered block form the stem; unnumbered ones after a
            # block (a final conv or norm) join the stage before them.
            numbered = _NUMBERED.search(name)
            if numbered:
                current = f"stage{int(numbered.group(3)) + 1}"
            groups.setdefault(current, []).append(prefix + name)
    groups["head"] = [prefix + n for n in sorted(head_names)]
    return groups


def describe_stages(model: nn.Module) -> list[tuple[str, int]]:
    parameters = dict(model.named_parameters())
    return [(name, sum(parameters[p].numel() for p in names)) for name, names in stages(model).items()]


def frozen_stage_names(model: nn.Module, freeze: str) -> list[str]:
    """The stages that `freeze` (none | backbone | N) names, validated against the model."""
    names = list(stages(model))
    if freeze in ("none", "0", ""):
        return []
    if freeze == "backbone":
        return names[:-1]
    if not str(freeze).isdigit():
        raise UserError(f"finetune.freeze must be none, backbone or a number of stages, got '{freeze}'")
    count = int(freeze)
    if count >= len(names):
        raise UserError(
            f"finetune.freeze {count} would freeze the head too: the model has {len(names) - 1} stages before "
            f"its head ({', '.join(names[:-1])}); use at most {len(names) - 1}, or 'backbone'"
        )
    return names[:count]


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    backbone_multiplier: float = 1.0,
    lr_decay: float = 1.0,
    include_frozen: bool = False,
) -> list[dict[str, Any]]:
    """Optimizer groups per stage: the head at `learning_rate`, backbone stages at
    `learning_rate * backbone_multiplier * lr_decay**depth` (depth 1 for the stage below the head),
    and no weight decay on 1-D parameters (BatchNorm, biases). Frozen parameters are left out unless
    `include_frozen` (a schedule will unfreeze them: until then they have no gradient, so the
    optimizer skips them — no update, no decay, no state).
    """
    if not 0 < lr_decay <= 1 or backbone_multiplier < 0:
        raise UserError("finetune.lr_decay must be in (0, 1] and finetune.backbone_lr_multiplier >= 0")
    named = dict(model.named_parameters())
    ordered = list(stages(model).items())
    groups = []
    for index, (stage, names) in enumerate(ordered):
        depth = len(ordered) - 1 - index
        scale = 1.0 if depth == 0 else backbone_multiplier * lr_decay**depth
        trainable = [named[n] for n in names if named[n].requires_grad or include_frozen]
        for decayed in (True, False):
            chosen = [p for p in trainable if (p.ndim > 1) == decayed]
            if chosen:
                groups.append(
                    {
                        "params": chosen,
                        "lr": learning_rate * scale,
                        "weight_decay": weight_decay if decayed else 0.0,
                        "stage": stage,
                    }
                )
    return groups


def adapter_parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float) -> list[dict[str, Any]]:
    """A peft-wrapped model trains only its adapter, head and BatchNorm: one learning rate, and no
    weight decay on 1-D parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "lr": learning_rate, "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "lr": learning_rate, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _keep_in_inference_mode(module: nn.Module, _inputs: Any) -> None:
    module.training = False


def resolve_bn_policy(bn_policy: str, pretrained: bool) -> str:
    """`auto`: pretrained BatchNorm statistics stay (frozen); a random-init model must learn its own."""
    if bn_policy not in BN_POLICIES:
        raise UserError(f"finetune.bn must be one of {', '.join(BN_POLICIES)}, got '{bn_policy}'")
    if bn_policy == "auto":
        return "frozen" if pretrained else "train"
    return bn_policy


def apply_freezing(model: nn.Module, frozen: list[str], bn_policy: str, keep_requires_grad: bool = False) -> set[str]:
    """Freezes the named stages; puts BatchNorm layers in inference mode as the policy says.

    Returns the names of the frozen parameters. With `keep_requires_grad` (a schedule under DDP,
    see unfreezing.py) the stages' parameters keep requires_grad and the caller drops their gradients.
    """
    if bn_policy not in BN_POLICIES or bn_policy == "auto":
        raise UserError(f"finetune.bn must be one of {', '.join(BN_POLICIES[1:])}, got '{bn_policy}'")
    groups = stages(model)
    frozen_params = {name for stage in frozen for name in groups[stage]}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(keep_requires_grad or name not in frozen_params)
    for handle in getattr(model, "_hf_cnn_ft_bn_hooks", []):
        handle.remove()
    hooks = []
    for name, module in model.named_modules():
        if not isinstance(module, BATCHNORM):
            continue
        own = {f"{name}.{p}" for p, _ in module.named_parameters()}
        in_frozen_stage = bool(own) and own <= frozen_params
        if bn_policy == "frozen" or (bn_policy == "frozen_in_frozen_stages" and in_frozen_stage):
            hooks.append(module.register_forward_pre_hook(_keep_in_inference_mode))
            if bn_policy == "frozen" or not keep_requires_grad:
                for parameter in module.parameters():
                    parameter.requires_grad_(False)
    model._hf_cnn_ft_bn_hooks = hooks
    return frozen_params


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
    head = head_linear(_backbone(model), model.config.num_labels)
    features = module_inputs(model, head, dataset, transform, batch_size, channels_last)
    labels = torch.tensor(dataset[LABEL_COLUMN], dtype=torch.long)
    return features.float().flatten(1), labels


def adapt_batchnorm(
    model: nn.Module, dataset: Dataset, transform: Callable, batch_size: int = 32, channels_last: bool = False
) -> int:
    """AdaBN: replaces every BatchNorm layer's running statistics with those of `dataset`.

    The layers average over the whole pass (momentum None) while everything else stays in inference
    mode (no dropout, no weight changes). Returns the number of layers adapted.
    """
    layers = [m for m in model.modules() if isinstance(m, BATCHNORM) and m.track_running_stats]
    momenta = [m.momentum for m in layers]

    was_training = model.training
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over every batch
        layer.train()
    try:
        with torch.no_grad():
            for pixels in pixel_batches(dataset, transform, batch_size, channels_last):
                model(pixel_values=pixels)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return len(layers)


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
    head = head_linear(_backbone(model), model.config.num_labels)
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


def class_loss_weights(
    setting: str | dict[str, float] | None, labels: list[int], label_names: list[str]
) -> torch.Tensor | None:
    """Per-class loss weights: `auto` gives n / (k * n_c), so the average weight per image is 1."""
    if setting is None or setting == "none":
        return None
    if setting == "auto":
        counts = torch.bincount(torch.tensor(labels), minlength=len(label_names)).float()
        weights = counts.sum() / (len(label_names) * counts.clamp(min=1))
        return weights
    if isinstance(setting, dict):
        unknown = [name for name in setting if name not in label_names]
        if unknown:
            raise UserError(
                f"finetune.class_weights names unknown classes {unknown}; classes: {', '.join(label_names)}"
            )
        return torch.tensor([float(setting.get(name, 1.0)) for name in label_names])
    raise UserError(f"finetune.class_weights must be auto, none or a mapping of class to weight, got {setting!r}")


def balanced_sample_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Per-image draw weights 1 / (images in its class): every class is drawn equally often."""
    y = torch.tensor(labels)
    counts = torch.bincount(y, minlength=num_classes).double()
    return (1.0 / counts.clamp(min=1))[y]


def resolve_strategy(args: FinetuneArguments) -> None:
    """Fills the settings a strategy presets and the recipe left unset (the saved recipe shows them)."""
    if args.strategy not in STRATEGIES:
        raise UserError(f"finetune.strategy must be one of {', '.join(STRATEGIES)}, got '{args.strategy}'")
    gradual = args.strategy == "gradual"
    if args.unfreeze is None:
        args.unfreeze = "one_per_epochs" if gradual else "none"
    if args.lr_decay is None:
        args.lr_decay = 0.7 if gradual else 1.0


def validate_strategy(args: FinetuneArguments) -> None:
    resolve_strategy(args)
    if args.strategy != "full" and args.head_epochs < 1:
        raise UserError(f"finetune.strategy {args.strategy} needs finetune.head_epochs >= 1")
    if args.feature_views < 1:
        raise UserError("finetune.feature_views must be at least 1")
    if args.probe_stages < 0:
        raise UserError(f"finetune.probe_stages must be 0 (the head alone) or more, got {args.probe_stages}")
    if args.sampler not in ("random", "balanced"):
        raise UserError(f"finetune.sampler must be random or balanced, got '{args.sampler}'")
    if args.l2sp_alpha < 0:
        raise UserError("finetune.l2sp_alpha must be >= 0")
    if args.ema_decay is not None and not 0 < args.ema_decay < 1:
        raise UserError(f"finetune.ema_decay must be between 0 and 1 (e.g. 0.999), got {args.ema_decay}")
    if args.wise_alpha is not None:
        if args.strategy not in ("two_phase", "gradual"):
            raise UserError(
                f"finetune.wise_alpha interpolates from the linear-probed start, which strategy {args.strategy} "
                "does not have: use two_phase or gradual"
            )
        if args.wise_alpha != "auto" and not 0 <= args.wise_alpha <= 1:
            raise UserError(f"finetune.wise_alpha must be auto or between 0 and 1, got {args.wise_alpha}")
