"""Multi-label decisions and metrics: a sigmoid per label, a threshold per label fitted on the validation split,
and scikit-learn's figures at those thresholds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn import metrics

from hf_cnn_ft.models.decisions import DEFAULT_THRESHOLD, decide, decision_correctness, sigmoid

THRESHOLD_GRID = np.linspace(0.05, 0.95, 19)  # the thresholds a fit chooses from: coarse, as validation is small


def fit_thresholds(logits: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per label, the threshold of THRESHOLD_GRID that maximises its F1 on these (validation) images; the
    middle of the best ones when several tie, DEFAULT_THRESHOLD for a label without positive images."""
    probabilities, targets = sigmoid(logits), np.asarray(targets) > 0.5
    fitted = []
    for label in range(targets.shape[1]):
        truth = targets[:, label]
        if not truth.any():
            fitted.append(DEFAULT_THRESHOLD)
            continue
        scores = np.array(
            [metrics.f1_score(truth, probabilities[:, label] >= t, zero_division=0) for t in THRESHOLD_GRID]
        )
        best = np.flatnonzero(scores >= scores.max() - 1e-12)
        fitted.append(round(float(THRESHOLD_GRID[best[len(best) // 2]]), 4))
    return fitted


def correctness_as_deployed(logits: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Each decision's correctness as the model will decide once its run ends: a multi-label model's at
    per-label thresholds fitted on these (validation) images, a single-label model's top class. Two models
    compared on validation are so each judged at its own thresholds: at 0.5, a fine-tuned model whose scores rank
    better but sit higher loses decisions that its fitted thresholds get right."""
    references = np.asarray(references)
    thresholds = fit_thresholds(logits, references) if references.ndim == 2 else None
    return decision_correctness(logits, references, thresholds)


def average_precision(truth: np.ndarray, probabilities: np.ndarray) -> float | None:
    """A label's average precision; None when no image has it (undefined)."""
    return float(metrics.average_precision_score(truth, probabilities)) if truth.any() else None


def multi_label_report(
    logits: np.ndarray, targets: np.ndarray, label_names: list[str], thresholds: list[float] | None = None
) -> dict[str, Any]:
    """Every multi-label figure for (images x labels) logits and multi-hot targets: mean average precision over
    the labels present, subset accuracy (every label right) as `accuracy`, Hamming loss, micro / macro /
    weighted precision, recall and F1 at the thresholds, and per label precision, recall, F1, AP and support."""
    logits, truth = np.asarray(logits, dtype=np.float64), np.asarray(targets) > 0.5
    probabilities, predicted = sigmoid(logits), decide(logits, thresholds)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        truth, predicted, average=None, zero_division=0
    )
    precisions = [average_precision(truth[:, k], probabilities[:, k]) for k in range(len(label_names))]
    present = [ap for ap in precisions if ap is not None]
    report: dict[str, Any] = {
        "accuracy": float(metrics.accuracy_score(truth, predicted)) if len(truth) else 0.0,
        "map": float(np.mean(present)) if present else 0.0,
        "hamming_loss": float(metrics.hamming_loss(truth, predicted)) if len(truth) else 0.0,
    }
    for average in ("macro", "micro", "weighted"):
        values = metrics.precision_recall_fscore_support(truth, predicted, average=average, zero_division=0)[:3]
        for name, value in zip(("precision", "recall", "f1"), values):
            report[f"{name}_{average}"] = float(value) if len(truth) else 0.0
    report["num_samples"] = len(truth)
    limits = thresholds or [DEFAULT_THRESHOLD] * len(label_names)
    report["per_class"] = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "average_precision": precisions[k],
            "support": int(support[k]),
            "threshold": float(limits[k]),
        }
        for k, name in enumerate(label_names)
    }
    return report


def multi_label_macro_f1(targets: np.ndarray, predicted: np.ndarray, num_labels: int) -> float:
    """Macro-F1 of multi-hot predictions (a probe epoch's, at the default threshold), over every label."""
    truth, predicted = np.asarray(targets) > 0.5, np.asarray(predicted) > 0.5
    return float(metrics.f1_score(truth, predicted, average="macro", zero_division=0))


def trainer_multi_label_metrics(label_names: list[str], keys: tuple[str, ...]) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for the Trainer of a multi-label run: the scalar figures at the default threshold
    (the thresholds are fitted once, after training)."""

    def compute(eval_prediction: Any) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        report = multi_label_report(logits, eval_prediction.label_ids, label_names)
        return {key: report[key] for key in keys if key in report}

    return compute
