"""Which parameters train, and how: freezing stages, frozen BatchNorm, per-stage rates, class balance.

Freezing a stage stops its parameters AND keeps its BatchNorm layers in inference mode, even though
the Trainer calls `model.train()` every step (a forward pre-hook switches them back), so running
statistics stay untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset
from torch import nn

from hf_cnn_ft.data.inputs import pixel_batches
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import BATCHNORM, stages

logger = logging.getLogger(__name__)


def frozen_stage_names(model: nn.Module, freeze: str) -> list[str]:
    """The stages that `freeze` (none | backbone | N, as the recipe settled it) names, validated against the
    model."""
    names = list(stages(model))
    if freeze == "none":
        return []
    if freeze == "backbone":
        return names[:-1]
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


def apply_freezing(model: nn.Module, frozen: list[str], bn_policy: str, keep_requires_grad: bool = False) -> set[str]:
    """Freezes the named stages; puts BatchNorm layers in inference mode as the policy says.

    Returns the names of the frozen parameters. With `keep_requires_grad` (a schedule under DDP,
    see unfreezing.py) the stages' parameters keep requires_grad and the caller drops their gradients.
    """
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
    unknown = [name for name in setting if name not in label_names]  # a mapping: checked at load
    if unknown:
        raise UserError(f"finetune.class_weights names unknown classes {unknown}; classes: {', '.join(label_names)}")
    return torch.tensor([float(setting.get(name, 1.0)) for name in label_names])


def balanced_sample_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Per-image draw weights 1 / (images in its class): every class is drawn equally often."""
    y = torch.tensor(labels)
    counts = torch.bincount(y, minlength=num_classes).double()
    return (1.0 / counts.clamp(min=1))[y]
