"""An `evaluate` metric module for image classification that works offline.

``evaluate.load("accuracy")`` fetches its script from the Hub; this module ships with the
package instead. Load it with ``evaluate.load(hf_cnn_ft.metrics.METRIC_SCRIPT)`` or instantiate
``ClassificationReport`` directly. It depends only on numpy, datasets and evaluate, so the file
also works when copied on its own.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy, precision, recall and F1 (macro, weighted and per class), top-5 accuracy when there
are more than five classes, and the confusion matrix (rows: true class, columns: predicted).
Macro averages run over the classes present in the references or the predictions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per-example class scores (logits or probabilities), one list of floats per example.
    references: the true class index of each example.
    label_names: optional class names, used as the keys of `per_class`.
Returns:
    accuracy, precision_macro, recall_macro, f1_macro, precision_weighted, recall_weighted,
    f1_weighted, top5_accuracy (more than 5 classes only), num_samples, per_class, confusion_matrix.
"""


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)


def compute_classification_report(
    scores: np.ndarray, references: np.ndarray, label_names: list[str] | None = None
) -> dict:
    """All classification metrics from a (N, K) score matrix and N true labels."""
    scores = np.asarray(scores, dtype=np.float64)
    references = np.asarray(references, dtype=np.int64)
    num_classes = scores.shape[1]
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_classes)]
    predictions = scores.argmax(axis=1)
    matrix = np.bincount(references * num_classes + predictions, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    true_positives = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    seen = (support > 0) | (predicted > 0)
    total = support.sum()
    report = {
        "accuracy": float(true_positives.sum() / total) if total else 0.0,
        "precision_macro": float(precision[seen].mean()) if seen.any() else 0.0,
        "recall_macro": float(recall[seen].mean()) if seen.any() else 0.0,
        "f1_macro": float(f1[seen].mean()) if seen.any() else 0.0,
        "precision_weighted": float((precision * support).sum() / total) if total else 0.0,
        "recall_weighted": float((recall * support).sum() / total) if total else 0.0,
        "f1_weighted": float((f1 * support).sum() / total) if total else 0.0,
    }
    if num_classes > 5:
        top5 = np.argsort(-scores, axis=1)[:, :5]
        report["top5_accuracy"] = float((top5 == references[:, None]).any(axis=1).mean()) if total else 0.0
    report["num_samples"] = int(total)
    report["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    report["confusion_matrix"] = matrix.tolist()
    return report


class ClassificationReport(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, label_names=None):
        return compute_classification_report(np.asarray(predictions), np.asarray(references), label_names)
