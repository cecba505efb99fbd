"""The probe phase with more than the labels to learn from: the unlabeled pool and an ensemble teacher.

Every set of images the probe reads is a list of views (`teachers.View`): the training images unaugmented and
in `feature_views - 1` augmented views, the validation images, the unlabeled images weak and in
`unlabeled_views` strong views. The student's frozen features of each view are computed once (and shared by
the trials of a search); with teachers, each teacher backbone computes the same views, the teacher is fitted on
the labelled ones, and its logits on every view become the student's soft labels.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from torch import nn

from hf_cnn_ft.config.sections import AugmentArguments
from hf_cnn_ft.config.signal import SignalArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import split_labels
from hf_cnn_ft.models.anatomy import backbone_of, head_linear
from hf_cnn_ft.strategies.probe import ProbeInputs, pooled_features, train_head
from hf_cnn_ft.strategies.semi_supervised import Pool, ProbeObjective, self_training_rows
from hf_cnn_ft.strategies.shared_features import shared_or_computed
from hf_cnn_ft.strategies.teachers import (
    Backbone,
    Teacher,
    TeacherModel,
    View,
    features_of_view,
    fit_teacher,
    load_backbones,
)

logger = logging.getLogger(__name__)

UNLABELED_SEED_OFFSET = 10_000  # the strong views of the unlabeled images draw other crops than the labelled ones


@dataclass
class ExtraSignal:
    """What the probe learns from besides the labelled images, and what it found (for metrics.json)."""

    settings: SignalArguments
    unlabeled: Dataset | None
    augment: AugmentArguments
    data_config: DataConfig  # the student's preprocessing
    findings: dict[str, Any] = field(default_factory=dict)
    teacher: TeacherModel | None = None  # the fitted ensemble, for the fine-tuning phase
    teacher_labelled: torch.Tensor | None = None  # its logits on the labelled views, for the probe
    teacher_strong: torch.Tensor | None = None  # on the pool's strong views (views x images x classes)

    @property
    def uses_pool(self) -> bool:
        return self.unlabeled is not None and self.settings.unlabeled_method != "none"

    @property
    def active(self) -> bool:
        return self.uses_pool or bool(self.settings.teachers)


def _labelled_views(probe: ProbeInputs) -> list[View]:
    return [View("train", "eval")] + [
        View("train", "train", probe.seed + k - 1) for k in range(1, max(1, probe.finetune.feature_views))
    ]


def _pool_views(probe: ProbeInputs) -> list[View]:
    base = probe.seed + UNLABELED_SEED_OFFSET
    return [View("unlabeled", "eval")] + [
        View("unlabeled", "strong", base + k) for k in range(probe.signal.settings.unlabeled_views)
    ]


def _images(probe: ProbeInputs, view: View) -> Dataset:
    return {"train": probe.train_split, "validation": probe.validation_split, "unlabeled": probe.signal.unlabeled}[
        view.images
    ]


def _features(model: nn.Module, data_config: DataConfig, probe: ProbeInputs, view: View) -> torch.Tensor:
    def extract(backbone: nn.Module, dataset: Dataset, transform) -> torch.Tensor:
        return pooled_features(
            backbone, dataset, transform, channels_last=probe.channels_last, precision=probe.precision
        )

    return features_of_view(model, data_config, probe.signal.augment, _images(probe, view), view, extract)


def _student(model: nn.Module, probe: ProbeInputs, view: View) -> torch.Tensor:
    """The student's features of a view, shared between the trials of a search."""

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        return _features(model, probe.signal.data_config, probe, view), torch.empty(0)

    return shared_or_computed(probe.features_key, f"signal-{view}", compute)[0]


def _labels(probe: ProbeInputs, images: str, views: int) -> torch.Tensor:
    return torch.tensor(split_labels(_images(probe, View(images, "eval"))), dtype=torch.long).repeat(views)


def prepare_teacher(model: nn.Module, probe: ProbeInputs) -> None:
    """Fits the ensemble teacher of `signal.teachers` on the labelled views (before the probe, and again when a run
    resumes) and keeps it, with its logits on the views the probe reads, in `probe.signal`."""
    signal = probe.signal
    if not signal.settings.teachers or signal.teacher is not None:
        return
    pool = _pool_views(probe) if signal.uses_pool else []
    others = load_backbones(signal.settings.teachers, list(model.config.id2label.values()), probe.channels_last)
    fitted = _fit_teacher(model, others, probe, _labelled_views(probe), pool)
    teacher, signal.teacher_labelled, signal.teacher_strong = fitted
    student = Backbone("student", copy.deepcopy(model).eval(), signal.data_config)
    signal.teacher = TeacherModel(student, others, teacher)


def _fit_teacher(
    model: nn.Module, backbones: list[Backbone], probe: ProbeInputs, labelled: list[View], pool: list[View]
) -> tuple[Teacher, torch.Tensor, torch.Tensor | None]:
    """The ensemble teacher and its logits on the labelled views and on the pool's strong views."""
    signal = probe.signal
    started = time.perf_counter()
    extractors = [(model, signal.data_config)] + [(b.model, b.data_config) for b in backbones]

    def blocks(views: list[View]) -> list[torch.Tensor]:
        return [
            torch.cat([_student(model, probe, v) if m is model else _features(m, c, probe, v) for v in views])
            for m, c in extractors
        ]

    classes = model.config.num_labels
    validation = [View("validation", "eval")]
    teacher = fit_teacher(
        blocks(labelled),
        _labels(probe, "train", len(labelled)),
        blocks(validation),
        _labels(probe, "validation", 1),
        classes,
    )
    teacher_labelled = teacher.logits(blocks(labelled))
    teacher_strong = torch.stack([teacher.logits(blocks([view])) for view in pool[1:]]) if pool else None
    signal.findings["teacher"] = {
        "backbones": [model.name_or_path or "student", *signal.settings.teachers],
        "validation_accuracy": teacher.validation_accuracy,
        "regularisation": teacher.regularisation,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return teacher, teacher_labelled, teacher_strong


def probe_with_signal(model: nn.Module, probe: ProbeInputs) -> list[dict[str, float]]:
    """The linear probe with the unlabeled pool and (or) an ensemble teacher; returns the per-epoch history.

    The head is also fitted on the labels alone, and the run keeps whichever scores better on the validation
    split (the labels alone on a tie): extra signal that does not help on this data is measured and dropped.
    """
    signal = probe.signal
    labelled = _labelled_views(probe)
    features = torch.cat([_student(model, probe, view) for view in labelled])
    labels = _labels(probe, "train", len(labelled))
    validation = (_student(model, probe, View("validation", "eval")), _labels(probe, "validation", 1))
    prepare_teacher(model, probe)
    pool = None
    if signal.uses_pool:
        pool_views = _pool_views(probe)
        strong = torch.stack([_student(model, probe, view) for view in pool_views[1:]])
        pool = Pool(_student(model, probe, pool_views[0]), strong, signal.teacher_strong)
    head = head_linear(backbone_of(model), model.config.num_labels)
    start = {name: tensor.clone() for name, tensor in head.state_dict().items()}
    history = _fit_with_signal(head, features, labels, validation, pool, probe)
    with_signal = {name: tensor.clone() for name, tensor in head.state_dict().items()}
    head.load_state_dict(start)
    alone = train_head(head, features, labels, probe.finetune, probe.seed, validation, probe.loss_weights)
    scores = {"with the extra signal": history[-1]["eval_accuracy"], "labels alone": alone[-1]["eval_accuracy"]}
    kept = "with the extra signal" if scores["with the extra signal"] > scores["labels alone"] else "labels alone"
    if kept == "with the extra signal":
        head.load_state_dict(with_signal)
    signal.findings["probe_kept"] = {"kept": kept, "validation_accuracy": scores}
    logger.info("linear probe: validation accuracy %s; kept the head fitted %s", scores, kept)
    return history if kept == "with the extra signal" else alone


def _fit_with_signal(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    validation: tuple[torch.Tensor, torch.Tensor],
    pool: Pool | None,
    probe: ProbeInputs,
) -> list[dict[str, float]]:
    signal = probe.signal
    settings, teacher_labelled = signal.settings, signal.teacher_labelled
    objective = ProbeObjective(
        settings, labels, head.out_features, probe.loss_weights, probe.seed, pool, teacher_labelled
    )
    hooks = probe.hooks(
        epoch_begin=lambda: objective.epoch_begin(head),
        objective=lambda logits, batch: objective(head, logits, batch),
        rows_per_epoch=objective.rows_per_epoch(),
    )
    history = train_head(head, features, labels, probe.finetune, probe.seed, validation, probe.loss_weights, hooks)
    if pool is not None and teacher_labelled is None and settings.unlabeled_method == "pseudo_label":
        history = _self_train(head, features, labels, pool, probe, validation, history)
    if pool is not None:
        signal.findings["unlabeled"] = {
            "images": int(pool.weak.shape[0]),
            "method": "teacher soft labels" if teacher_labelled is not None else settings.unlabeled_method,
            "confident_share": objective.pseudo_labelled or signal.findings.get("confident_share"),
        }
    return history


def _self_train(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    pool: Pool,
    probe: ProbeInputs,
    validation: tuple[torch.Tensor, torch.Tensor],
    history: list[dict[str, float]],
) -> list[dict[str, float]]:
    """Self-training: the probed head labels the pool's confident images, then trains on them and the labels."""
    shares = torch.bincount(labels, minlength=head.out_features).float() / len(labels)
    rows, pseudo, share = self_training_rows(head, pool, probe.signal.settings.confidence_threshold, shares)
    probe.signal.findings["confident_share"] = share
    logger.info("pseudo_label: %.0f%% of the unlabeled images are labelled by the probed head", 100 * share)
    offset = history[-1]["epoch"] if history else 0.0
    hooks = probe.hooks(epoch_end=lambda entry: probe.epoch_end({**entry, "epoch": entry["epoch"] + offset}))
    second = train_head(
        head,
        torch.cat([features, rows]),
        torch.cat([labels, pseudo]),
        probe.finetune,
        probe.seed + 1,
        validation,
        probe.loss_weights,
        hooks,
    )
    return history + [{**entry, "epoch": entry["epoch"] + offset} for entry in second]
