"""What the model gets wrong, in numbers: per-image losses, the highest ones, the most confused pairs,
and the metrics of each slice of the data (site, camera, batch...)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hf_cnn_ft.evaluation.classification_report import macro_f1


def per_image_losses(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each image: -log p(true class)."""
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))


def top_losses(losses: np.ndarray, predictions: np.ndarray, labels: np.ndarray, k: int) -> list[int]:
    """The k wrongly classified images with the highest loss, highest first."""
    wrong = np.flatnonzero(predictions != labels)
    return [int(i) for i in wrong[np.argsort(-losses[wrong], kind="stable")][:k]]


def confident_correct(probs: np.ndarray, labels: np.ndarray, per_class: int) -> list[int]:
    """The `per_class` most confidently correct images of each class, class by class."""
    predictions, chosen = probs.argmax(axis=1), []
    for label in np.unique(labels):
        right = np.flatnonzero((labels == label) & (predictions == label))
        chosen += [int(i) for i in right[np.argsort(-probs[right, label], kind="stable")][:per_class]]
    return chosen


def most_confused(confusion: list[list[int]], label_names: list[str], top: int = 10) -> list[dict[str, Any]]:
    """Off-diagonal cells of the confusion matrix, most frequent first; rate = share of the true class."""
    matrix = np.asarray(confusion)
    support = matrix.sum(axis=1)
    pairs = [
        {
            "true": label_names[t],
            "predicted": label_names[p],
            "count": int(matrix[t, p]),
            "rate": float(matrix[t, p] / support[t]),
        }
        for t in range(len(matrix))
        for p in range(len(matrix))
        if t != p and matrix[t, p] > 0
    ]
    return sorted(pairs, key=lambda pair: (-pair["count"], -pair["rate"]))[:top]


def slice_metrics(predictions: np.ndarray, labels: np.ndarray, slices: list[str], num_labels: int) -> dict[str, Any]:
    """Accuracy and macro-F1 of each slice, the worst slice (lowest accuracy) and its gap to the whole."""
    values = np.asarray(slices)
    overall = float((predictions == labels).mean())
    rows = {}
    for name in sorted(set(slices)):
        members = values == name
        truth, predicted = labels[members], predictions[members]
        f1 = macro_f1(truth, predicted, num_labels)
        rows[name] = {
            "num_samples": int(members.sum()),
            "accuracy": float((predicted == truth).mean()),
            "f1_macro": float(f1),
        }
    worst = min(rows, key=lambda name: (rows[name]["accuracy"], name))
    return {"overall_accuracy": overall, "per_slice": rows, "worst": worst, "gap": overall - rows[worst]["accuracy"]}
