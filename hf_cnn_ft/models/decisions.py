"""From a classifier's logits to its answer: the top class, or of a multi-label model every label whose sigmoid
probability reaches its threshold. Shared by evaluation, prediction and the exports' checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5  # a label's decision before (or without) a fitted threshold


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def decide(logits: np.ndarray, thresholds: Sequence[float] | None) -> np.ndarray:
    """Each image's labels (images x labels, bool): the labels whose probability reaches their threshold."""
    limits = DEFAULT_THRESHOLD if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return sigmoid(logits) >= limits


def per_image_correct(
    logits: np.ndarray, references: np.ndarray, thresholds: Sequence[float] | None = None
) -> np.ndarray:
    """Per image, whether the answer is right: the top class, or of multi-hot references every label (at
    `thresholds`, the default one without)."""
    logits, references = np.asarray(logits), np.asarray(references)
    if references.ndim == 2:
        return (decide(logits, thresholds) == (references > 0.5)).all(axis=1)
    return logits.argmax(axis=-1) == references


def decision_correctness(
    logits: np.ndarray, references: np.ndarray, thresholds: Sequence[float] | None = None
) -> np.ndarray:
    """Each decision's correctness, flat: one per image (its top class), or of multi-hot references one per image
    and label. What a paired comparison of two models counts: judging a label set only as a whole (all right or
    not) throws away most of what its decisions say."""
    references = np.asarray(references)
    if references.ndim == 2:
        return (decide(logits, thresholds) == (references > 0.5)).ravel()
    return per_image_correct(logits, references)
