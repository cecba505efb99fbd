"""The "none of these" answer: how much an image looks like the classes the model was trained on, and the threshold
below which `predict`, the app and an export answer `unknown` instead of a class.

Three scores, each higher for a familiar image. From the logits: the maximum softmax probability (Hendrycks &
Gimpel 2017) and the negative free energy, logsumexp of the logits (Liu et al. 2020). From the features the
classifier reads (the pooled backbone output): the Mahalanobis distance to the nearest class mean of the training
images, L2-normalised, under their shared covariance (Lee et al. 2018; Ledoit-Wolf shrinkage, since a few hundred
images cannot estimate a thousand-dimensional covariance alone), negated. A linear head trained on a few hundred
photos can be surest of images unlike all of them; distances in the pretrained feature space see them: on the food
benchmark the feature score reached 0.86 / 0.99 AUROC where the logit scores gave 0.47 / 0.66 (RESULTS.md).

The threshold is fitted on the validation split alone, as the share of its correctly classified images it may turn
away (`report.rejection_rate`, 5% by default). `auto` picks between the two logit scores, keeping the one that
better tells the validation images the model gets right from those it gets wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from hf_cnn_ft.models.io import UNKNOWN_REJECTION, familiarity_statistics

UNKNOWN = "unknown"


def max_softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1).max(dim=-1).values.numpy()


def negative_energy(logits: np.ndarray) -> np.ndarray:
    return torch.logsumexp(torch.as_tensor(logits, dtype=torch.float64), dim=-1).numpy()


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"msp": max_softmax, "energy": negative_energy}
FEATURE_SCORES = ("mahalanobis",)  # computed from the classifier's input features and the training statistics


def feature_statistics(features: torch.Tensor, labels: np.ndarray, num_labels: int) -> dict[str, torch.Tensor]:
    """The class means of the L2-normalised training `features` and the precision (inverse covariance) of their
    deviations from them, shrunk towards a scaled identity (Ledoit-Wolf)."""
    from sklearn.covariance import LedoitWolf

    unit = torch.nn.functional.normalize(features.double(), dim=1)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    means = torch.zeros(num_labels, unit.shape[1], dtype=torch.float64)
    for label in labels.unique():
        means[label] = unit[labels == label].mean(0)
    deviations = (unit - means[labels]).numpy()
    precision = LedoitWolf(assume_centered=True).fit(deviations).precision_
    present = torch.zeros(num_labels, dtype=torch.bool)
    present[labels.unique()] = True
    return {"class_means": means.float(), "precision": torch.from_numpy(precision).float(), "present": present}


def mahalanobis_familiarity(features: torch.Tensor, statistics: dict[str, torch.Tensor]) -> np.ndarray:
    """Minus the squared Mahalanobis distance of each row of `features` to the nearest training class mean."""
    unit = torch.nn.functional.normalize(torch.as_tensor(features).double(), dim=1)
    precision = statistics["precision"].double()
    means = statistics["class_means"].double()[statistics["present"]]
    weighted = unit @ precision  # (x - m)' P (x - m) = x'Px - 2 x'Pm + m'Pm, without an images x classes x D array
    distances = (weighted * unit).sum(1, keepdim=True) - 2 * weighted @ means.T + ((means @ precision) * means).sum(1)
    return (-distances.min(dim=1).values).numpy()


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

    @property
    def needs_features(self) -> bool:
        return self.score in FEATURE_SCORES

    def rejects(
        self,
        logits: np.ndarray,
        features: torch.Tensor | None = None,
        statistics: dict[str, torch.Tensor] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(score, unknown?) for each image: from its `logits`, or its `features` and the training statistics."""
        scores = familiarity(self.score, logits, features, statistics)
        return scores, scores < self.threshold


def familiarity(
    score: str,
    logits: np.ndarray,
    features: torch.Tensor | None = None,
    statistics: dict[str, torch.Tensor] | None = None,
) -> np.ndarray:
    if score in FEATURE_SCORES:
        return mahalanobis_familiarity(features, statistics)
    return SCORES[score](logits)


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


def fit_rejection(
    logits: np.ndarray,
    labels: np.ndarray,
    rate: float,
    score: str = "auto",
    features: torch.Tensor | None = None,
    statistics: dict[str, torch.Tensor] | None = None,
) -> Rejection | str:
    """The rejection threshold on validation `logits` (as the saved model gives them; for a feature score, their
    `features` and the training `statistics`), or why none was fitted."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    correct = logits.argmax(axis=1) == labels
    if correct.sum() < MIN_CORRECT_IMAGES:
        return (
            f"{int(correct.sum())} correctly classified validation images, below the {MIN_CORRECT_IMAGES} needed to "
            "place the threshold"
        )
    chosen = _best_score(logits, correct) if score == "auto" else score
    known = familiarity(chosen, logits, features, statistics)[correct]
    threshold = float(np.quantile(known, rate))
    rejected = float((known < threshold).mean())
    return Rejection(chosen, threshold, rate, round(rejected, 4), len(labels))


def store_rejection(model: torch.nn.Module, rejection: Rejection) -> None:
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model
    setattr(plain.config, UNKNOWN_REJECTION, asdict(rejection))


def rejection_of(model: torch.nn.Module) -> Rejection | None:
    """The threshold the model's run fitted, where this model can apply it: None for a model without one, and for
    a feature score without the training statistics beside it (an export): it always answers a class."""
    stored = getattr(model.config, UNKNOWN_REJECTION, None)
    rejection = Rejection(**stored) if stored else None
    if rejection and rejection.needs_features and familiarity_statistics(model) is None:
        return None
    return rejection


def open_set_report(
    known_logits: np.ndarray,
    known_labels: np.ndarray,
    unknown_logits: np.ndarray,
    rejection: Rejection | None,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
    statistics: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """How well the model tells the images of its classes (`known_*`: a labelled split) from images of others: each
    score's AUROC (the feature score's where `features`, known and unknown, and the training `statistics` are
    given), and at the model's own threshold, the share of other images accepted as a class (the false acceptance
    rate) and the share of known images turned away."""
    report: dict[str, Any] = {"known_images": len(known_logits), "unknown_images": len(unknown_logits)}
    report["auroc"] = {name: familiarity_auroc(fn(known_logits), fn(unknown_logits)) for name, fn in SCORES.items()}
    known_features, unknown_features = features if features and statistics else (None, None)
    if known_features is not None:
        for name in FEATURE_SCORES:
            report["auroc"][name] = familiarity_auroc(
                familiarity(name, known_logits, known_features, statistics),
                familiarity(name, unknown_logits, unknown_features, statistics),
            )
    if rejection is None or (rejection.needs_features and known_features is None):
        report["threshold"] = None  # the model answers a class for every image: every other image is accepted
        report["false_acceptance_rate"] = 1.0
        return report
    _, known_rejected = rejection.rejects(known_logits, known_features, statistics)
    _, unknown_rejected = rejection.rejects(unknown_logits, unknown_features, statistics)
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
