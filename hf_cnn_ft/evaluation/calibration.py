"""Whether a model's 0.97 means 97%: expected calibration error, the reliability diagram's bins, and
temperature scaling (Guo et al. 2017): one scalar, fitted on the validation split, that divides the
logits. Argmax predictions never change; only the probabilities do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CALIBRATION_BINS = 15


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=-1).numpy()


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Confidence (top probability) in equal-width bins: each bin's count, mean confidence and accuracy."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """The count-weighted mean gap between confidence and accuracy over the bins."""
    used = [b for b in reliability_bins(probs, labels, bins) if b["count"]]
    gaps = sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in used)
    return float(gaps / len(labels)) if len(labels) else 0.0


# One scalar fitted on a few dozen images is noisy, and on a split the model gets (almost) entirely right the
# likelihood keeps growing as T falls towards 0, making every probability 1. Below this many images, or outside
# the bounds (a network a quarter as sure as it should be is implausible; twenty times surer is a model at
# chance), the probabilities are left as trained.
MIN_CALIBRATION_IMAGES = 50
TEMPERATURE_BOUNDS = (0.25, 20.0)


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float  # 1.0 when not fitted
    fitted: bool
    reason: str  # why it was not fitted ("" when it was)


def _minimise_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    scores = torch.as_tensor(logits, dtype=torch.float64)
    targets = torch.as_tensor(labels, dtype=torch.long)
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(.) stays positive
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(scores / log_temperature.exp(), targets)
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return float(log_temperature.detach().exp())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """The temperature that minimises the negative log-likelihood of `labels` (validation logits), when the
    images are enough to tell it and it lies inside TEMPERATURE_BOUNDS; otherwise 1.0 and the reason."""
    low, high = TEMPERATURE_BOUNDS
    if len(labels) < MIN_CALIBRATION_IMAGES:
        return TemperatureFit(1.0, False, f"{len(labels)} validation images, below the {MIN_CALIBRATION_IMAGES} needed")
    temperature = _minimise_nll(logits, labels)
    if not low <= temperature <= high:
        errors = int((np.asarray(logits).argmax(axis=1) != np.asarray(labels)).sum())
        why = "too few to tell how sure to be" if temperature < low else "a model this far off is not calibrated"
        return TemperatureFit(
            1.0,
            False,
            f"the fit ran to T = {temperature:.3g}, outside [{low:g}, {high:g}] ({errors} errors on "
            f"{len(labels)} validation images: {why})",
        )
    return TemperatureFit(temperature, True, "")
