"""An `evaluate` metric module for image classification that works offline.

``evaluate.load("accuracy")`` fetches its script from the Hub; this module ships with the
package instead. Load it with ``evaluate.load(hf_cnn_ft.evaluation.metrics.METRIC_SCRIPT)`` or
instantiate ``ClassificationReport`` directly. The math is scikit-learn's; the file depends only on
numpy, scikit-learn, datasets and evaluate, so it also works when copied on its own.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from sklearn import metrics

_DESCRIPTION = """
Accuracy, precision, recall and F1 (macro, weighted and per class), top-5 accuracy when there
are ten classes or more, and the confusion matrix (rows: true class, columns: predicted).
Macro and weighted averages run over the classes present in the references or the predictions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per-example class scores (logits or probabilities), one list of floats per example.
    references: the true class index of each example.
    label_names: optional class names, used as the keys of `per_class`.
Returns:
    accuracy, precision_macro, recall_macro, f1_macro, precision_weighted, recall_weighted,
    f1_weighted, top5_accuracy (10 classes or more), num_samples, per_class, confusion_matrix.
"""


TOP5_FROM_CLASSES = 10  # with fewer classes, top-5 accuracy is close to 1 by construction and says little


def averaged_classes(references: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[int]:
    """The classes a macro or weighted average runs over: those present in the references or the predictions
    (scikit-learn's rule), every class when there are none."""
    seen = sorted(set(np.asarray(references).tolist()) | set(np.asarray(predictions).tolist()))
    return seen or list(range(num_classes))


def macro_f1(references: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """The macro-F1 of every report, probe epoch and slice: the mean F1 over `averaged_classes`."""
    if not len(references):
        return 0.0
    labels = averaged_classes(references, predictions, num_classes)
    return float(metrics.f1_score(references, predictions, labels=labels, average="macro", zero_division=0))


def compute_classification_report(
    scores: np.ndarray, references: np.ndarray, label_names: list[str] | None = None
) -> dict:
    """All classification metrics from a (N, K) score matrix and N true labels, by scikit-learn.

    Per-class figures cover every class; the macro and weighted averages, like scikit-learn's own
    `classification_report`, cover the classes present in the references or the predictions.
    """
    scores = np.asarray(scores, dtype=np.float64)
    references = np.asarray(references, dtype=np.int64)
    num_classes = scores.shape[1]
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_classes)]
    predictions = scores.argmax(axis=1)
    every = list(range(num_classes))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        references, predictions, labels=every, zero_division=0
    )
    report = {"accuracy": float(metrics.accuracy_score(references, predictions)) if len(references) else 0.0}
    for average in ("macro", "weighted"):
        values = metrics.precision_recall_fscore_support(
            references,
            predictions,
            labels=averaged_classes(references, predictions, num_classes),
            average=average,
            zero_division=0,
        )[:3]
        for name, value in zip(("precision", "recall", "f1"), values):
            report[f"{name}_{average}"] = float(value) if len(references) else 0.0
    if num_classes >= TOP5_FROM_CLASSES:
        report["top5_accuracy"] = (
            float(metrics.top_k_accuracy_score(references, scores, k=5, labels=every)) if len(references) else 0.0
        )
    report["num_samples"] = len(references)
    report["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    report["confusion_matrix"] = metrics.confusion_matrix(references, predictions, labels=every).tolist()
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
