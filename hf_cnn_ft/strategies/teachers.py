"""An ensemble of pretrained backbones as a teacher, distilled into the one model the run saves.

The teacher is a logistic regression on the concatenated, standardised features of the student's own frozen
backbone and every backbone of `signal.teachers`: on a few hundred photos several backbones' features together
separate the classes better than any one of them (benchmarks/RESULTS.md). It is fitted on the labelled training
views only, its regularisation picked on the validation split. The student then learns from its soft labels on
the same views it sees itself (function matching, Beyer et al. 2022): each view is made with one seed for
every backbone, so the crop, flip and colour changes are the same, only resized and normalised per backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from hf_cnn_ft.config.sections import AugmentArguments, ModelArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.transforms import eval_transform, strong_transform, train_transform
from hf_cnn_ft.models.anatomy import backbone_of, head_linear
from hf_cnn_ft.models.build import build_model

logger = logging.getLogger(__name__)

REGULARISATION = (0.01, 0.05, 0.2, 1.0)  # inverse L2 strengths tried on the validation split


@dataclass
class Backbone:
    """A frozen feature extractor and the preprocessing its weights were trained with."""

    name: str
    model: nn.Module
    data_config: DataConfig


def load_backbones(sources: list[str], label_names: list[str], channels_last: bool) -> list[Backbone]:
    backbones = []
    for source in sources:
        model, data_config = build_model(ModelArguments(model=source), label_names)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        backbones.append(Backbone(source, model.eval(), data_config))
    return backbones


@dataclass(frozen=True)
class View:
    """One view of a set of images: which images, which transform (eval, train or strong) and its seed."""

    images: str  # train, validation or unlabeled
    kind: str  # eval | train | strong
    seed: int = 0


def view_transform(kind: str, data_config: DataConfig, augment: AugmentArguments) -> Callable:
    """The transform of a view for one backbone's preprocessing: the same random choices for every backbone."""
    if kind == "eval":
        return eval_transform(data_config)
    return (strong_transform if kind == "strong" else train_transform)(data_config, augment)


@dataclass
class Teacher:
    """The fitted ensemble: per-backbone standardisation and one linear classifier over all of them."""

    means: list[torch.Tensor]
    scales: list[torch.Tensor]
    weight: torch.Tensor  # classes x features
    bias: torch.Tensor
    validation_accuracy: float
    regularisation: float

    def logits(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """The teacher's logits for rows whose features are `blocks`, one tensor per backbone (student first)."""
        joined = torch.cat([(b - m) / s for b, m, s in zip(blocks, self.means, self.scales)], dim=1)
        return joined @ self.weight.T + self.bias


def fit_teacher(
    train_blocks: list[torch.Tensor],
    labels: torch.Tensor,
    validation_blocks: list[torch.Tensor],
    validation_labels: torch.Tensor,
    classes: int,
) -> Teacher:
    """A multinomial logistic regression on the standardised, concatenated features; its L2 strength is the one of
    REGULARISATION that scores best on validation (ties: the stronger)."""
    from sklearn.linear_model import LogisticRegression

    means = [b.mean(0) for b in train_blocks]
    scales = [b.std(0).clamp_min(1e-6) * len(train_blocks) ** 0.5 for b in train_blocks]

    def joined(blocks: list[torch.Tensor]) -> np.ndarray:
        return torch.cat([(b - m) / s for b, m, s in zip(blocks, means, scales)], dim=1).numpy()

    x, y = joined(train_blocks), labels.numpy()
    x_val, y_val = joined(validation_blocks), validation_labels.numpy()
    best: tuple[float, float, LogisticRegression] | None = None
    for strength in REGULARISATION:
        fitted = LogisticRegression(C=strength, max_iter=2000).fit(x, y)
        score = float((fitted.predict(x_val) == y_val).mean())
        if best is None or score > best[0]:
            best = (score, strength, fitted)
    score, strength, fitted = best
    weight, bias = torch.zeros(classes, x.shape[1]), torch.full((classes,), -1e4)  # an unseen class: never
    seen = torch.as_tensor(fitted.classes_, dtype=torch.long)
    coefficients = torch.as_tensor(fitted.coef_, dtype=torch.float32)
    intercepts = torch.as_tensor(fitted.intercept_, dtype=torch.float32)
    if len(seen) == 2:  # scikit-learn keeps one row for two classes: the logits are (-z/2, z/2)
        coefficients, intercepts = (
            torch.stack([-coefficients[0] / 2, coefficients[0] / 2]),
            torch.stack([-intercepts[0] / 2, intercepts[0] / 2]),
        )
    weight[seen], bias[seen] = coefficients, intercepts
    logger.info("teacher: %d backbones, validation accuracy %.3f (C = %g)", len(train_blocks), score, strength)
    return Teacher(means, scales, weight, bias, score, strength)


def features_of_view(
    backbone: nn.Module,
    data_config: DataConfig,
    augment: AugmentArguments,
    dataset: Dataset,
    view: View,
    extract: Callable[[nn.Module, Dataset, Callable], torch.Tensor],
) -> torch.Tensor:
    """One backbone's features of one view, its random choices drawn from the view's seed."""
    transform = view_transform(view.kind, data_config, augment)
    if view.kind != "eval":
        torch.manual_seed(view.seed)
    return extract(backbone, dataset, transform)


def _as_preprocessed(pixels: torch.Tensor, source: DataConfig, target: DataConfig) -> torch.Tensor:
    """A batch normalised and sized for `source`, as `target`'s preprocessing would have made it: the same
    view, resized and normalised again."""
    source_mean, source_std, target_mean, target_std = (
        torch.tensor(v, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        for v in (source.mean, source.std, target.mean, target.std)
    )
    images = pixels * source_std + source_mean
    if target.input_size != pixels.shape[-1]:
        size = (target.input_size, target.input_size)
        images = nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    return (images - target_mean) / target_std


class TeacherModel(nn.Module):
    """The fitted teacher as a function of the student's input batch, for distillation while the whole student
    trains: every backbone sees the very view the student sees (mixed images included)."""

    def __init__(self, student: Backbone, others: list[Backbone], teacher: Teacher) -> None:
        super().__init__()
        self.backbones = nn.ModuleList([b.model for b in (student, *others)])
        self.configs = [b.data_config for b in (student, *others)]
        self.teacher = teacher
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> TeacherModel:
        return super().train(False)  # always in inference mode: its BatchNorm statistics stay as fitted

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        from hf_cnn_ft.strategies.probe import module_input

        blocks = []
        for model, config in zip(self.backbones, self.configs):
            inputs = _as_preprocessed(pixels.float(), self.configs[0], config)
            head = head_linear(backbone_of(model), model.config.num_labels)
            blocks.append(module_input(model, head, inputs.contiguous(memory_format=torch.channels_last)).flatten(1))
        parameters = (self.teacher.means, self.teacher.scales, self.teacher.weight, self.teacher.bias)
        on_device = Teacher(*(self._moved(p, pixels.device) for p in parameters), 0.0, 0.0)
        return on_device.logits([b.float() for b in blocks])

    @staticmethod
    def _moved(value: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
        return [v.to(device) for v in value] if isinstance(value, list) else value.to(device)
