"""Which parameters train: freezing stages, BatchNorm kept in inference mode, and BatchNorm statistics adapted.

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
