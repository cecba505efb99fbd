"""The report of a multi-label model: per label, the images it gets most confidently wrong (a label missed or
wrongly given), each beside the Grad-CAM of that label, and every image's label-set decision and loss.

Written by `evaluation/model_report.write_report` for a model whose config says multi-label."""

from __future__ import annotations

from typing import Any

import numpy as np

from hf_cnn_ft.models.decisions import decide, sigmoid


def label_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of every (image, label) pair, images x labels."""
    probabilities = np.clip(sigmoid(logits), 1e-12, 1 - 1e-12)
    truth = np.asarray(targets) > 0.5
    return -np.where(truth, np.log(probabilities), np.log(1 - probabilities))


def worst_per_label(
    losses: np.ndarray, chosen: np.ndarray, targets: np.ndarray, per_label: int
) -> list[tuple[int, int]]:
    """(image, label) pairs decided wrongly, the `per_label` highest-loss ones of each label, label by label."""
    wrong = chosen != (np.asarray(targets) > 0.5)
    pairs = []
    for label in range(losses.shape[1]):
        images = np.flatnonzero(wrong[:, label])
        pairs += [(int(i), label) for i in images[np.argsort(-losses[images, label], kind="stable")][:per_label]]
    return pairs


def label_set_findings(
    logits: np.ndarray, targets: np.ndarray, names: list[str], thresholds: list[float] | None, top: int
) -> dict[str, Any]:
    """What report.json holds for a multi-label split: the worst (image, label) decisions (about `top` in all,
    spread over the labels) and every image's true and decided labels with its summed loss."""
    losses, chosen = label_losses(logits, targets), decide(logits, thresholds)
    probabilities, truth = sigmoid(logits), np.asarray(targets) > 0.5
    pairs = worst_per_label(losses, chosen, targets, max(1, top // max(1, len(names))))
    return {
        "top_losses": [
            {
                "index": i,
                "label": names[k],
                "has_label": bool(truth[i, k]),
                "probability": float(probabilities[i, k]),
                "loss": float(losses[i, k]),
            }
            for i, k in pairs
        ],
        "per_image": [
            {
                "index": i,
                "labels": [names[k] for k in np.flatnonzero(truth[i])],
                "predicted": [names[k] for k in np.flatnonzero(chosen[i])],
                "loss": float(losses[i].sum()),
            }
            for i in range(len(truth))
        ],
    }


def tile_caption(entry: dict[str, Any]) -> str:
    """`label: missed (p 0.08), loss 2.5` or `label: wrongly given (p 0.93), loss 2.7`."""
    what = "missed" if entry["has_label"] else "wrongly given"
    return f"{entry['label']}: {what} (p {entry['probability']:.2f}), {entry['loss']:.2f}"
