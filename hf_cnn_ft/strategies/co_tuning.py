"""Co-Tuning (You et al. 2020): the pretrained classifier as a second target while the network fine-tunes.

The backbone's own ImageNet head says, for every training image, how ImageNet's 1,000 classes see it; averaged
over the training images of each target class, that is the relationship p(source class | target class). While
the whole network fine-tunes, the pretrained head (kept as it was) is trained, through the shared features,
towards the relationship row of each image's label: the features keep what made the source classes separable
instead of drifting to fit a few hundred labels. The relationship is learnt on the training split alone.

Here the source head stays frozen (the paper trains it too): its loss reaches only the backbone, and the saved
model is the plain classifier, with nothing of Co-Tuning left in it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from datasets import Dataset
from torch import nn
from torch.nn import functional as F

from hf_cnn_ft.data.dataset import split_labels
from hf_cnn_ft.models.anatomy import backbone_of, head_linear
from hf_cnn_ft.strategies.probe import pooled_features


def class_relationship(source_probabilities: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """p(source class | target class): the mean source distribution over each target class's images (a class
    without images gets the overall mean)."""
    overall = source_probabilities.mean(0)
    rows = [source_probabilities[labels == c].mean(0) if (labels == c).any() else overall for c in range(classes)]
    return torch.stack(rows)


class CoTuning:
    """The pretrained head's loss for a batch: captures the features the new head receives in each forward pass
    and scores the source head's prediction on them against the labels' relationship rows."""

    def __init__(self, source_head: nn.Linear, relationship: torch.Tensor, weight: float) -> None:
        self.source_head, self.relationship, self.weight = source_head, relationship, weight
        self.features: torch.Tensor | None = None
        self._handle = None

    def attach(self, model: nn.Module) -> None:
        """Starts capturing the input of `model`'s classification layer (a peft model: its head copy)."""
        plain = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = head_linear(backbone_of(plain), plain.config.num_labels)

        def capture(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self.features = inputs[0]

        self._handle = head.register_forward_pre_hook(capture)

    def to(self, device: torch.device) -> CoTuning:
        self.source_head.to(device)
        self.relationship = self.relationship.to(device)
        return self

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """`weight` x the cross-entropy of the source head's prediction against the relationship rows of `labels`
        (class indices, or soft rows of mixed images)."""
        relationship = self.relationship
        rows = relationship[labels] if labels.dim() == 1 else labels.to(relationship.dtype) @ relationship
        log_probabilities = F.log_softmax(self.source_head(self.features.flatten(1).float()), dim=-1)
        return self.weight * -(rows * log_probabilities).sum(-1).mean()


def fit_co_tuning(
    model: nn.Module,
    source_head: nn.Linear,
    train_split: Dataset,
    transform: Callable,
    weight: float,
    channels_last: bool,
) -> CoTuning:
    """The relationship from the training images as the pretrained backbone sees them (before any fine-tuning)."""
    features = pooled_features(model, train_split, transform, channels_last=channels_last)
    with torch.no_grad():
        source = F.softmax(source_head(features), dim=-1)
    labels = torch.tensor(split_labels(train_split), dtype=torch.long)
    return CoTuning(source_head, class_relationship(source, labels, model.config.num_labels), weight)
