"""Evaluation metrics from the offline `evaluate` module, adapted to the Trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hf_cnn_ft.config.choices import METRIC_NAMES, MULTI_LABEL_METRIC_NAMES
from hf_cnn_ft.evaluation.classification_report import ClassificationReport
from hf_cnn_ft.evaluation.multi_label import trainer_multi_label_metrics

METRIC_SCRIPT = str(Path(__file__).with_name("classification_report.py"))


def classification_report(scores: np.ndarray, references: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Every metric for a (N, K) score matrix: overall, per class and the confusion matrix."""
    metric = ClassificationReport(keep_in_memory=True)
    return metric.compute(
        predictions=np.asarray(scores, dtype=np.float32), references=np.asarray(references), label_names=label_names
    )


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    return {key: report[key] for key in METRIC_NAMES if key in report}


# The scalar figures of a multi-label evaluation: METRIC_NAMES' own (accuracy: every label of an image right), and
# mean average precision, micro-F1 and the Hamming loss.
MULTI_LABEL_SCALARS = (
    *(name for name in METRIC_NAMES if name != "top5_accuracy"),
    *MULTI_LABEL_METRIC_NAMES,
    "hamming_loss",
)


def trainer_compute_metrics(label_names: list[str], multi_label: bool = False) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for the Trainer: the scalar metrics of the gathered predictions."""
    if multi_label:
        return trainer_multi_label_metrics(label_names, MULTI_LABEL_SCALARS)

    def compute(eval_prediction: Any) -> dict[str, float]:
        scores, references = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(scores, tuple):
            scores = scores[0]
        return scalar_metrics(classification_report(scores, references, label_names))

    return compute
