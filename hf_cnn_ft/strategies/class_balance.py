"""Class balance for imbalanced data: per-class loss weights and per-image draw weights for the sampler."""

from __future__ import annotations

import numpy as np
import torch

from hf_cnn_ft.errors import UserError


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


def label_pos_weights(setting: str | dict[str, float] | None, targets: np.ndarray, label_names: list[str]):
    """A multi-label run's weights on each label's positive images (BCE's pos_weight): `auto` gives
    negatives / positives per label, so a rare label's few positives weigh as much as its many negatives."""
    if setting == "auto":
        positives = torch.from_numpy(targets.sum(0)).float()
        return ((len(targets) - positives) / positives.clamp(min=1)).clamp(min=1.0)
    return class_loss_weights(setting, [], label_names)


def balanced_label_set_weights(targets: np.ndarray) -> torch.Tensor:
    """Per-image draw weights of a multi-label split: 1 / (images of its rarest label)."""
    counts = targets.sum(0)
    inverse = np.where(targets > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return torch.from_numpy(inverse.max(1)).double()
