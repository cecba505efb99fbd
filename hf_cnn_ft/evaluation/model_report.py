"""The run's report: what the model gets wrong and why, and whether its probabilities can be trusted.

`write_report` runs on one split of labelled images and writes `report.json` and its pictures (top
losses and correct examples with Grad-CAM, the reliability diagram) into a folder. `train` runs it on
the test split when a run ends, `hf-cnn-ft report` on any model and split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from hf_cnn_ft.config.sections import DataArguments, ReportArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import IMAGE_COLUMN
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.calibration import expected_calibration_error, probabilities, reliability_bins
from hf_cnn_ft.evaluation.error_analysis import (
    confident_correct,
    most_confused,
    per_image_losses,
    slice_metrics,
    top_losses,
)
from hf_cnn_ft.evaluation.evaluate import labelled_split, predict_scores
from hf_cnn_ft.evaluation.gradcam import grad_cam_views
from hf_cnn_ft.evaluation.label_set_report import label_set_findings, tile_caption
from hf_cnn_ft.evaluation.report_plots import Tile, plot_reliability, plot_tiles
from hf_cnn_ft.models.io import folded_temperature_of, is_multi_label_model, label_names_of, label_thresholds
from hf_cnn_ft.share.run_dir import add_to_run, load_run

REPORT_FILE = "report.json"


@dataclass
class ReportData:
    """One split to report on: its images, their labels as the model's class indices (of a multi-label model,
    multi-hot rows), optional slices."""

    dataset: Dataset
    labels: np.ndarray
    split: str
    slices: list[str] | None = None


def _confusion(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> list[list[int]]:
    counts = np.bincount(labels * num_labels + predictions, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels).tolist()


def _calibration(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, Any]:
    raw, scaled = probabilities(logits), probabilities(logits, temperature)
    return {
        "temperature": temperature,
        "ece": expected_calibration_error(raw, labels),
        "ece_scaled": expected_calibration_error(scaled, labels) if temperature != 1.0 else None,
        "bins": reliability_bins(raw, labels),
        "bins_scaled": reliability_bins(scaled, labels) if temperature != 1.0 else None,
    }


def _tiles(
    model: torch.nn.Module,
    data_config: DataConfig,
    data: ReportData,
    indices: list[int],
    captions: list[str],
    targets: list[int],
) -> list[Tile]:
    """The model's view of each chosen image, with the Grad-CAM of class `targets`."""
    if not indices:
        return []
    images = [data.dataset[i][IMAGE_COLUMN] for i in indices]
    shown, heat = grad_cam_views(model, data_config, images, targets)
    return [Tile(shown[k], heat[k], captions[k]) for k in range(len(indices))]


def write_report(
    model: torch.nn.Module,
    data_config: DataConfig,
    data: ReportData,
    settings: ReportArguments,
    folder: Path,
    test_time_flips: str = "none",
    logits: np.ndarray | None = None,
) -> dict[str, Any]:
    """Writes report.json and the pictures into `folder`; returns the report. `logits`: the model's calibrated
    logits of `data` (its test-time views averaged) when the caller has them already."""
    names = label_names_of(model)
    if logits is None:
        logits = predict_scores(model, data.dataset, eval_transform(data_config), test_time_flips=test_time_flips)
    if is_multi_label_model(model):
        return _write_label_set_report(model, data_config, data, settings, folder, logits)
    temperature = folded_temperature_of(model)  # the logits are calibrated; `logits * T` are as trained
    probs = probabilities(logits)
    predictions, labels = probs.argmax(axis=1), data.labels
    losses = per_image_losses(probs, labels)
    wrong = top_losses(losses, predictions, labels, settings.top_losses)
    right = confident_correct(probs, labels, settings.correct_per_class)
    report: dict[str, Any] = {
        "split": data.split,
        "num_samples": len(labels),
        "calibration": _calibration(logits * temperature, labels, temperature),
        "most_confused": most_confused(_confusion(predictions, labels, len(names)), names),
        "slices": slice_metrics(predictions, labels, data.slices, len(names)) if data.slices else None,
        "top_losses": wrong,
        "correct_examples": right,
        "per_image": [
            {"index": i, "label": names[t], "predicted": names[p], "probability": float(probs[i, p]), "loss": float(l)}
            for i, (t, p, l) in enumerate(zip(labels, predictions, losses))
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    plot_reliability(report["calibration"]["bins"], report["calibration"]["bins_scaled"], folder / "reliability.png")
    pictures = ["reliability.png"]
    for name, chosen, title in (
        ("top_losses.png", wrong, f"highest-loss {data.split} images: true / predicted (probability), loss"),
        ("correct_examples.png", right, f"most confident correct {data.split} images"),
    ):
        captions = [
            f"{names[labels[i]]} / {names[predictions[i]]} ({probs[i, predictions[i]]:.2f}), {losses[i]:.2f}"
            for i in chosen
        ]
        tiles = _tiles(model, data_config, data, chosen, captions, [int(predictions[i]) for i in chosen])
        if tiles:
            plot_tiles(tiles, folder / name, title)
            pictures.append(name)
    report["pictures"] = pictures
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _write_label_set_report(
    model: torch.nn.Module,
    data_config: DataConfig,
    data: ReportData,
    settings: ReportArguments,
    folder: Path,
    logits: np.ndarray,
) -> dict[str, Any]:
    """A multi-label model's report (data.labels: multi-hot rows): each label's worst decisions with the
    Grad-CAM of that label, and every image's true and decided labels."""
    names = label_names_of(model)
    found = label_set_findings(logits, data.labels, names, label_thresholds(model), settings.top_losses)
    report: dict[str, Any] = {"split": data.split, "num_samples": len(data.labels), "multi_label": True, **found}
    folder.mkdir(parents=True, exist_ok=True)
    worst = found["top_losses"]
    indices, targets = [e["index"] for e in worst], [names.index(e["label"]) for e in worst]
    tiles = _tiles(model, data_config, data, indices, [tile_caption(e) for e in worst], targets)
    report["pictures"] = []
    if tiles:
        title = f"{data.split} images: each label's most confidently wrong decisions, with that label's Grad-CAM"
        plot_tiles(tiles, folder / "top_losses.png", title)
        report["pictures"].append("top_losses.png")
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json and the model card keep of a report: everything but the per-image rows."""
    return {key: value for key, value in report.items() if key != "per_image"}


def report_model(
    source: str | Path,
    data_args: DataArguments,
    split: str,
    folder: Path,
    settings: ReportArguments,
    test_time_flips: str = "none",
) -> dict[str, Any]:
    """`hf-cnn-ft report`: the report of a run directory, adapter run or Hub model on one split. Written
    into the run itself (metrics.json and card included) when `folder` is the run directory."""
    model, data_config = load_run(source)
    loaded, dataset, slices, labels = labelled_split(model, data_args, split)
    if split == "test" and "test" not in loaded.splits:
        raise UserError(
            f"{data_args.dataset} has no test split (the run held none out: data.test_fraction 0): pass "
            "--split validation to report on the validation split"
        )
    report = write_report(
        model, data_config, ReportData(dataset, labels, split, slices), settings, folder, test_time_flips
    )
    if Path(source).is_dir() and Path(source).resolve() == folder.resolve():
        add_to_run(folder, "report", report_summary(report))
    return report
