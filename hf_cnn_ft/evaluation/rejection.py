"""The "none of these" answer: how much an image looks like the classes the model was trained on, and the threshold
below which `predict`, the app and an export answer `unknown` instead of a class.

Two scores, each higher for a familiar image: the maximum softmax probability (Hendrycks & Gimpel 2017) and the
negative free energy, logsumexp of the logits (Liu et al. 2020), which keeps the magnitude softmax normalises away.
The threshold is fitted on the validation split alone, as the share of its correctly classified images it may turn
away (`report.rejection_rate`, 5% by default); `auto` keeps the score that better tells the validation images the
model gets right from those it gets wrong, the one kind of doubt a split of known classes shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from hf_cnn_ft.models.io import UNKNOWN_REJECTION

UNKNOWN = "unknown"


def max_softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1).max(dim=-1).values.numpy()


def negative_energy(logits: np.ndarray) -> np.ndarray:
    return torch.logsumexp(torch.as_tensor(logits, dtype=torch.float64), dim=-1).numpy()


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"msp": max_softmax, "energy": negative_energy}
# Fewer correctly classified validation images than this cannot place a 5% quantile: no threshold is fitted.
MIN_CORRECT_IMAGES = 20


@dataclass(frozen=True)
class Rejection:
    """What config.json keeps: the score, its threshold, and how it was fitted."""

    score: str
    threshold: float
    rate: float  # the share of correctly classified validation images asked to fall below the threshold
    validation_rejected: float  # the share that did
    validation_images: int
    fitted_on: str = "validation"

    def rejects(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score, unknown?) for each row of `logits`."""
        scores = SCORES[self.score](logits)
        return scores, scores < self.threshold


def familiarity_auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """How well a score ranks known images above others (0.5: chance, 1: every known image above every other)."""
    truth = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    return float(roc_auc_score(truth, np.r_[known, unknown]))


def _best_score(logits: np.ndarray, correct: np.ndarray) -> str:
    """The score that better separates correct from wrong validation predictions; msp when nothing is wrong."""
    if correct.all():
        return "msp"
    separation = {name: familiarity_auroc(fn(logits[correct]), fn(logits[~correct])) for name, fn in SCORES.items()}
    return max(separation, key=separation.__getitem__)


def fit_rejection(logits: np.ndarray, labels: np.ndarray, rate: float, score: str = "auto") -> Rejection | str:
    """The rejection threshold on validation `logits` (as the saved model gives them), or why none was fitted."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    correct = logits.argmax(axis=1) == labels
    if correct.sum() < MIN_CORRECT_IMAGES:
        return (
            f"{int(correct.sum())} correctly classified validation images, below the {MIN_CORRECT_IMAGES} needed to "
            "place the threshold"
        )
    chosen = _best_score(logits, correct) if score == "auto" else score
    known = SCORES[chosen](logits[correct])
    threshold = float(np.quantile(known, rate))
    rejected = float((known < threshold).mean())
    return Rejection(chosen, threshold, rate, round(rejected, 4), len(labels))


def store_rejection(model: torch.nn.Module, rejection: Rejection) -> None:
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model
    setattr(plain.config, UNKNOWN_REJECTION, asdict(rejection))


def rejection_of(model: torch.nn.Module) -> Rejection | None:
    """The threshold the model's run fitted (None for a model without one: it always answers a class)."""
    stored = getattr(model.config, UNKNOWN_REJECTION, None)
    return Rejection(**stored) if stored else None


def open_set_report(
    known_logits: np.ndarray, known_labels: np.ndarray, unknown_logits: np.ndarray, rejection: Rejection | None
) -> dict[str, Any]:
    """How well the model tells the images of its classes (`known_*`: a labelled split) from images of others: each
    score's AUROC, and at the model's own threshold, the share of other images accepted as a class (the false
    acceptance rate) and the share of known images turned away."""
    report: dict[str, Any] = {"known_images": len(known_logits), "unknown_images": len(unknown_logits)}
    report["auroc"] = {name: familiarity_auroc(fn(known_logits), fn(unknown_logits)) for name, fn in SCORES.items()}
    if rejection is None:
        report["threshold"] = None  # the model always answers a class: every other image is accepted
        report["false_acceptance_rate"] = 1.0
        return report
    _, known_rejected = rejection.rejects(known_logits)
    _, unknown_rejected = rejection.rejects(unknown_logits)
    correct = known_logits.argmax(axis=1) == np.asarray(known_labels)
    report.update(
        score=rejection.score,
        threshold=rejection.threshold,
        auroc_of_score=report["auroc"][rejection.score],
        false_acceptance_rate=float(1 - unknown_rejected.mean()),
        known_rejected=float(known_rejected.mean()),
        correct_rejected=float(known_rejected[correct].mean()) if correct.any() else None,
        accuracy_of_accepted=float(correct[~known_rejected].mean()) if (~known_rejected).any() else None,
    )
    return report
