"""Evaluating a fine-tuned model directory on a labelled dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from hf_cnn_ft.config.paths import collect_images
from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import ImageData, split_labels, targets_of
from hf_cnn_ft.data.inputs import view_batches
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import eval_transform, evaluation_views
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.calibration import expected_calibration_error, probabilities
from hf_cnn_ft.evaluation.metrics import classification_report
from hf_cnn_ft.evaluation.multi_label import multi_label_report
from hf_cnn_ft.evaluation.predict import file_logits, forward
from hf_cnn_ft.evaluation.rejection import open_set_report, rejection_of
from hf_cnn_ft.models.io import (
    familiarity_statistics,
    folded_temperature_of,
    is_multi_label_model,
    label_names_of,
    label_thresholds,
)
from hf_cnn_ft.share.run_dir import load_run

ALL_SPLITS = "all"


def _label_mapping(data_labels: list[str], model_labels: dict[str, int], source: str) -> np.ndarray:
    unknown = [name for name in data_labels if name not in model_labels]
    if unknown:
        raise UserError(
            f"{source} has classes the model does not know ({', '.join(unknown[:5])}); "
            f"the model's classes are: {', '.join(model_labels)}"
        )
    return np.array([model_labels[name] for name in data_labels], dtype=np.int64)


def predict_scores(
    model: torch.nn.Module, dataset: Dataset, transform, batch_size: int = 64, test_time_flips: str = "none"
) -> np.ndarray:
    """Logits for every image of `dataset`, in order, averaged over the test-time views."""
    return scores_and_features(model, dataset, transform, batch_size, test_time_flips)[0]


def scores_and_features(
    model: torch.nn.Module, dataset: Dataset, transform, batch_size: int = 64, test_time_flips: str = "none"
) -> tuple[np.ndarray, torch.Tensor | None]:
    """`predict_scores`, and the features the model's "unknown" score reads (None where it reads none)."""
    views = evaluation_views(transform, test_time_flips)
    outputs, features = [], []
    with torch.inference_mode():
        for batches in view_batches(dataset, views, batch_size):
            logits, read = forward(model, batches)
            outputs.append(logits.numpy())
            features += [read] if read is not None else []
    logits = np.concatenate(outputs) if outputs else np.zeros((0, model.config.num_labels), dtype=np.float32)
    return logits, torch.cat(features) if features else None


def labelled_split(
    model: torch.nn.Module, data_args: DataArguments, split: str
) -> tuple[ImageData, Dataset, list[str] | None, np.ndarray]:
    """One split of a labelled dataset (test: the run's evaluation split; all: every image), its slice
    values, and its labels as the model's class indices."""
    if split == ALL_SPLITS:
        data_args = replace(data_args, validation_fraction=0.5, test_fraction=0.0)
    data: ImageData = load_image_data(data_args)
    name = data.evaluation_split if split == "test" else split
    sizes = data.split_sizes()
    streamed = [s for s in (list(sizes) if split == ALL_SPLITS else [name]) if s in sizes and sizes[s] is None]
    if streamed:
        raise UserError(
            f"the {streamed[0]} split of {data_args.dataset} is a stream, read while training and never whole: "
            "evaluate the validation or test split"
        )
    if split == ALL_SPLITS:
        from datasets import concatenate_datasets

        dataset = concatenate_datasets(list(data.splits.values()))
        slices = sum((data.slices[s] for s in data.splits), []) if data.slices else None
    elif name in data.splits:
        dataset, slices = data.splits[name], data.slices[name] if data.slices else None
    else:
        raise UserError(f"split '{split}' not found; use one of: {', '.join(data.splits)}, {ALL_SPLITS}")
    mapping = _label_mapping(data.label_names, model.config.label2id, data_args.dataset or "")
    labels = split_labels(dataset)
    if data.multi_label:  # label sets as multi-hot rows over the model's labels
        sets = [mapping[np.asarray(row, dtype=np.int64)].tolist() for row in labels]
        return data, dataset, slices, targets_of(sets, model.config.num_labels)
    return data, dataset, slices, mapping[np.asarray(labels, dtype=np.int64)]


def evaluate_model(
    model_dir: str | Path,
    data_args: DataArguments,
    split: str = "test",
    test_time_flips: str = "none",
    unknown: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Every metric of the model on one split (or all images) of a labelled dataset; with `unknown` (image files or
    folders of classes the model was not trained on), how well its "unknown" answer tells them apart."""
    model, data_config = load_run(model_dir)
    if unknown and is_multi_label_model(model):
        raise UserError(
            "--unknown measures the 'unknown' answer of a single-label model; a multi-label model answers no label "
            "for an image unlike all of them: remove --unknown"
        )
    others = collect_images(unknown) if unknown else None  # a wrong path fails before the labelled data loads
    data, dataset, _, references = labelled_split(model, data_args, split)
    scores, features = scores_and_features(model, dataset, eval_transform(data_config), test_time_flips=test_time_flips)
    if is_multi_label_model(model):
        report = multi_label_report(scores, references, label_names_of(model), label_thresholds(model))
        return {**report, "skipped_images": len(data.skipped)}
    if others:
        views = evaluation_views(eval_transform(data_config), test_time_flips)
        _, other_logits, other_features, unreadable = file_logits(model, views, others)
        both = (features, other_features) if features is not None else None
        statistics = familiarity_statistics(model)
        report_unknown = open_set_report(
            scores, references, other_logits.numpy(), rejection_of(model), both, statistics
        )
        report_unknown["skipped_images"] = len(unreadable)
    label_names = label_names_of(model)
    report = classification_report(scores, references, label_names)
    report["temperature"] = folded_temperature_of(model)  # already in the logits
    report["expected_calibration_error"] = expected_calibration_error(probabilities(scores), references)
    report["skipped_images"] = len(data.skipped)
    if others:
        report["unknown"] = report_unknown
    return report
