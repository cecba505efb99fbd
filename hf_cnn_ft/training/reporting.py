"""What happens after training, on held-out images: the final evaluation, the temperature and the "unknown"
threshold fitted on the validation split, and the report written into the finished run."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import ImageData, split_labels, split_targets
from hf_cnn_ft.data.inputs import with_pixel_values
from hf_cnn_ft.data.transforms import evaluation_views
from hf_cnn_ft.evaluation.calibration import expected_calibration_error, fit_temperature, probabilities
from hf_cnn_ft.evaluation.metrics import classification_report
from hf_cnn_ft.evaluation.model_report import ReportData, report_summary, write_report
from hf_cnn_ft.evaluation.multi_label import fit_thresholds, multi_label_report
from hf_cnn_ft.evaluation.rejection import FEATURE_SCORES, feature_statistics, fit_rejection, store_rejection
from hf_cnn_ft.evaluation.views import average_views
from hf_cnn_ft.models.io import fold_temperature, set_familiarity_statistics, set_label_thresholds
from hf_cnn_ft.models.precision import set_run_precision
from hf_cnn_ft.share.run_dir import add_to_run
from hf_cnn_ft.strategies.probe import pooled_features
from hf_cnn_ft.training.trainer import progress_named

logger = logging.getLogger(__name__)


def split_logits(
    trainer: Trainer, data: ImageData, split: str, evaluation: Callable, test_time_flips: str
) -> tuple[list[np.ndarray], np.ndarray]:
    """The logits of every view of `split` (the plain one first) and the labels, gathered across processes
    without the padding duplicates of the last batch."""
    views = evaluation_views(evaluation, test_time_flips)
    outputs = []
    for number, view in enumerate(views):
        named = f"{split} images" + (f", view {number + 1} of {len(views)}" if len(views) > 1 else "")
        with progress_named(trainer, named):
            outputs.append(trainer.predict(with_pixel_values(data.splits[split], view), metric_key_prefix=split))
    return [output.predictions for output in outputs], outputs[0].label_ids


@dataclass
class FinalEvaluation:
    report: dict[str, Any]  # on the evaluation split, the logits averaged over the test-time views
    plain_report: dict[str, Any] | None  # of the plain view alone when there are several views
    logits: np.ndarray  # the averaged logits, as trained (the run's report reuses them)
    label_thresholds: dict[str, Any] | None = None  # a multi-label run's, fitted on validation first


def final_evaluation(trainer: Trainer, data: ImageData, evaluation: Callable, test_time_flips: str) -> FinalEvaluation:
    """The one evaluation of the evaluation split; of a multi-label run, at thresholds fitted on validation first."""
    fitted = fit_label_thresholds(trainer, data, evaluation, test_time_flips)
    views, labels = split_logits(trainer, data, data.evaluation_split, evaluation, test_time_flips)
    logits = average_views(views)

    def report_of(scores: np.ndarray) -> dict[str, Any]:
        if data.multi_label:
            return multi_label_report(scores, labels, data.label_names, list(fitted["thresholds"].values()))
        return classification_report(scores, labels, data.label_names)

    return FinalEvaluation(report_of(logits), report_of(views[0]) if len(views) > 1 else None, logits, fitted)


def fit_label_thresholds(
    trainer: Trainer, data: ImageData, evaluation: Callable, test_time_flips: str
) -> dict[str, Any] | None:
    """A multi-label run's decision threshold per label, fitted on the validation logits (the averaged views, as
    `predict` makes them) and kept in config.json; None for a single-label run."""
    if not data.multi_label:
        return None
    views, targets = split_logits(trainer, data, "validation", evaluation, test_time_flips)
    thresholds = fit_thresholds(average_views(views), targets)
    set_label_thresholds(trainer.model, thresholds)
    logger.info(
        "label thresholds fitted on the validation split (each label's best F1): %s",
        ", ".join(f"{name} {t:.2f}" for name, t in zip(data.label_names, thresholds)),
    )
    return {
        "fitted_on": "validation",
        "rule": "best F1 per label",
        "thresholds": dict(zip(data.label_names, thresholds)),
    }


@dataclass
class ValidationFits:
    calibration: dict[str, Any] | None  # the temperature folded into the head, or why none was
    rejection: dict[str, Any] | None  # the "unknown" threshold stored in config.json, or why none was


def fit_on_validation(
    recipe: Recipe, trainer: Trainer, data: ImageData, evaluation: Callable, test_time_flips: str
) -> ValidationFits:
    """What is fitted on the validation logits (the averaged test-time views, as `predict` makes them), in one
    pass: the temperature, folded into the classification layer so that every loader gives calibrated
    probabilities, and then, on those calibrated logits, the "unknown" threshold, kept in config.json. Every
    process calls it."""
    report = recipe.report
    if "validation" not in data.splits or not (report.temperature_scaling or report.rejection_rate):
        return ValidationFits(None, None)
    if data.multi_label:
        logger.info("multi-label: no temperature and no 'unknown' threshold; each label has its own threshold")
        return ValidationFits(None, None)
    views, labels = split_logits(trainer, data, "validation", evaluation, test_time_flips)
    logits = average_views(views)
    calibration = _calibrate(trainer.model, logits, labels) if report.temperature_scaling else None
    calibrated = logits / (calibration or {}).get("temperature", 1.0)
    rejection = None
    if report.rejection_rate:
        rejection = _fit_rejection(trainer.model, calibrated, labels, recipe, data, evaluation)
    return ValidationFits(calibration, rejection)


def _calibrate(model, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    fit = fit_temperature(logits, labels)
    if not fit.fitted:
        logger.info("probabilities left as trained, no temperature fitted: %s", fit.reason)
        return {"temperature": 1.0, "fitted": False, "reason": fit.reason}
    fold_temperature(model, fit.temperature)
    logger.info(
        "temperature %.3f fitted on the validation split, folded into the classification layer", fit.temperature
    )
    return {
        "temperature": fit.temperature,
        "fitted": True,
        "fitted_on": "validation",
        "folded_into_head": True,
        "validation_ece": expected_calibration_error(probabilities(logits), labels),
        "validation_ece_scaled": expected_calibration_error(probabilities(logits, fit.temperature), labels),
    }


# The training images a feature score's statistics are computed on, at most (a random sample of larger splits).
STATISTICS_IMAGES = 5000


def _fit_rejection(
    model, logits: np.ndarray, labels: np.ndarray, recipe: Recipe, data: ImageData, evaluation: Callable
) -> dict[str, Any]:
    score, features, statistics = recipe.report.rejection_score, None, None
    if score in FEATURE_SCORES:
        why_not = _why_no_features(model, data)
        if why_not:
            logger.info("'unknown' scored by the logits' energy instead of %s: %s", score, why_not)
            score = "energy"
        else:
            statistics, features = _feature_statistics(model, data, evaluation, recipe)
    fit = fit_rejection(logits, labels, recipe.report.rejection_rate, score, features, statistics)
    if isinstance(fit, str):
        logger.info("no 'unknown' threshold fitted, the model always answers a class: %s", fit)
        return {"fitted": False, "reason": fit}
    store_rejection(model, fit)
    set_familiarity_statistics(model, statistics)
    logger.info(
        "'unknown' below %s %.4g: %.1f%% of the correctly classified validation images",
        fit.score,
        fit.threshold,
        100 * fit.validation_rejected,
    )
    return {"fitted": True, **dataclasses.asdict(fit)}


def _why_no_features(model, data: ImageData) -> str | None:
    if hasattr(model, "get_base_model"):
        return "a peft adapter's run"
    if data.split_sizes().get("train") is None:
        return "the training split is streamed"
    return None


def _feature_statistics(
    model, data: ImageData, evaluation: Callable, recipe: Recipe
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The training features' statistics, and the validation images' features (the plain view, as `predict`
    scores them)."""
    train = data.splits["train"]
    if len(train) > STATISTICS_IMAGES:
        train = train.shuffle(seed=0).select(range(STATISTICS_IMAGES))
    batch, channels_last, precision = 64, recipe.model.channels_last, recipe.training.precision
    named = "'unknown' statistics: features of the {} images"
    features = pooled_features(model, train, evaluation, batch, channels_last, precision, named.format("training"))
    statistics = feature_statistics(features, np.asarray(split_labels(train)), model.config.num_labels)
    validation = data.splits["validation"]
    return statistics, pooled_features(
        model, validation, evaluation, batch, channels_last, precision, named.format("validation")
    )


def report_finished_run(
    recipe: Recipe, model, data_config: DataConfig, data: ImageData, output_dir: Path, logits: np.ndarray
) -> None:
    """Adds the report on the evaluation split to a finished run, from the final evaluation's calibrated
    `logits`. A failure is a warning: the run's results are already written and stay as they are."""
    if not recipe.report.report_at_end:
        return
    split = data.evaluation_split
    slices = data.slices[split] if data.slices else None
    labels = split_targets(data.splits[split]) if data.multi_label else np.asarray(split_labels(data.splits[split]))
    report_data = ReportData(data.splits[split], labels, split, slices)
    try:
        model = set_run_precision(model.eval(), recipe.training.precision)
        flips = recipe.augment.test_time_flips
        report = write_report(model, data_config, report_data, recipe.report, output_dir, flips, logits)
        add_to_run(output_dir, "report", report_summary(report))
    except Exception as exc:  # the report is an extra: any failure leaves the finished run intact
        logger.warning(
            "the report could not be written (%s: %s); the run is complete. Try again with `hf-cnn-ft report %s`",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            output_dir,
        )
