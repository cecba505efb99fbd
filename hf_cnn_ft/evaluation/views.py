"""Test-time views: the one rule by which the logits of an image's views become its logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from hf_cnn_ft.models.anatomy import backbone_of, head_linear
from hf_cnn_ft.models.precision import autocast, run_precision

Logits = TypeVar("Logits")  # a torch.Tensor or a numpy array of (images, classes)


def average_views(per_view: Sequence[Logits]) -> Logits:
    """The mean of the logits over the views (the plain view first; `augment.test_time_flips`). Every
    evaluation path averages with this: the run's final evaluation, `evaluate` and `predict`."""
    return sum(per_view[1:], per_view[0]) / len(per_view)


def mean_logits(model: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """The model's logits for one batch, averaged over its views (each a batch of pixel values), in the precision
    its run chose (training.precision)."""
    with autocast(run_precision(model)):
        return average_views([model(pixel_values=pixels).logits.float() for pixels in views])


def mean_logits_and_features(model: nn.Module, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`mean_logits`, and the features the classifier layer read for the plain view (the first)."""
    head = head_linear(backbone_of(model), model.config.num_labels)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach().float()))
    try:
        logits = mean_logits(model, views)
    finally:
        handle.remove()
    return logits, captured[0].flatten(1)
