"""Predicting the classes of image files with a fine-tuned model directory."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedModel

from hf_cnn_ft.config.paths import check_predictions_path, collect_images
from hf_cnn_ft.data.images import open_image
from hf_cnn_ft.data.inputs import Transform, view_pixel_values
from hf_cnn_ft.data.transforms import eval_transform, evaluation_views
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.rejection import UNKNOWN, rejection_of
from hf_cnn_ft.evaluation.views import mean_logits, mean_logits_and_features
from hf_cnn_ft.models.decisions import decide
from hf_cnn_ft.models.io import familiarity_statistics, is_multi_label_model, label_thresholds
from hf_cnn_ft.share.run_dir import load_run


@dataclass
class Answer:
    """One image's top-k classes and probabilities, and the answer: the top class, or `unknown` where the image
    scores below the threshold the model's run fitted (`familiarity`: that score; None for a model without one)."""

    labels: list[str]
    scores: list[float]
    answer: str
    familiarity: float | None = None
    label_set: list[str] | None = None  # a multi-label model's answer: every label at or above its threshold


@dataclass
class Prediction:
    path: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None
    answer: str | None = None
    familiarity: float | None = None
    label_set: list[str] | None = None


LABEL_SET_SEPARATOR = ";"  # between the labels of a multi-label answer in one text cell (the CSV, the terminal)


def _batches(items: list[Path], size: int) -> Iterable[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def answers(
    model: PreTrainedModel, logits: torch.Tensor, top_k: int, features: torch.Tensor | None = None
) -> list[Answer]:
    """The top-k classes of each row of `logits` (as the model gives them: calibrated where the run folded a
    temperature into its head), and each row's answer under the model's "unknown" threshold (a feature score reads
    `features`, the classifier's input)."""
    if is_multi_label_model(model):
        return _label_set_answers(model, logits, top_k)
    scores, indices = logits.softmax(-1).topk(max(1, min(top_k, model.config.num_labels)), dim=-1)
    rejection = rejection_of(model)
    familiarity, unknown = None, None
    if rejection:
        familiarity, unknown = rejection.rejects(logits.numpy(), features, familiarity_statistics(model))
    results = []
    for row, (row_scores, row_indices) in enumerate(zip(scores.tolist(), indices.tolist())):
        labels = [model.config.id2label[i] for i in row_indices]
        answer = UNKNOWN if unknown is not None and unknown[row] else labels[0]
        score = None if familiarity is None else round(float(familiarity[row]), 6)
        results.append(Answer(labels, [round(s, 6) for s in row_scores], answer, score))
    return results


def _label_set_answers(model: PreTrainedModel, logits: torch.Tensor, top_k: int) -> list[Answer]:
    """A multi-label model's answers: each label's sigmoid probability (the top k), and the labels at or above the
    thresholds its run fitted on validation."""
    scores, indices = logits.sigmoid().topk(max(1, min(top_k, model.config.num_labels)), dim=-1)
    chosen = decide(logits.numpy(), label_thresholds(model))
    results = []
    for row, (row_scores, row_indices) in enumerate(zip(scores.tolist(), indices.tolist())):
        names = [model.config.id2label[int(i)] for i in chosen[row].nonzero()[0]]
        labels = [model.config.id2label[i] for i in row_indices]
        rounded = [round(s, 6) for s in row_scores]
        results.append(Answer(labels, rounded, LABEL_SET_SEPARATOR.join(names), None, names))
    return results


def top_k_predictions(
    model: PreTrainedModel, views: Sequence[Transform], images: Sequence[Image.Image], top_k: int
) -> list[Answer]:
    """The answers for `images`: their logits averaged over the test-time views."""
    with torch.inference_mode():
        logits, features = forward(model, view_pixel_values(images, views))
    return answers(model, logits, top_k, features)


def forward(model: PreTrainedModel, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's logits averaged over its views, and the features its "unknown" score reads where it reads them."""
    rejection = rejection_of(model)
    if rejection and rejection.needs_features:
        return mean_logits_and_features(model, views)
    return mean_logits(model, views), None


def file_logits(
    model: PreTrainedModel, views: Sequence[Transform], files: Sequence[Path], batch_size: int = 32
) -> tuple[list[Path], torch.Tensor, torch.Tensor | None, dict[Path, str]]:
    """The logits of every readable file (averaged over `views`), in order, the features its "unknown" score reads
    (None where it reads none), and why each other file was skipped."""
    readable, rows, features, unreadable = [], [], [], {}
    for chunk in _batches(list(files), batch_size):
        images = []
        for path in chunk:
            try:
                images.append(open_image(path))
                readable.append(path)
            except ValueError as exc:
                unreadable[path] = str(exc)
        if images:
            with torch.inference_mode():
                logits, read = forward(model, view_pixel_values(images, views))
            rows.append(logits)
            features += [read] if read is not None else []
    logits = torch.cat(rows) if rows else torch.zeros(0, model.config.num_labels)
    return readable, logits, torch.cat(features) if features else None, unreadable


def predict_files(
    model_dir: str | Path,
    inputs: Sequence[str | Path],
    top_k: int = 3,
    batch_size: int = 32,
    test_time_flips: str = "none",
) -> list[Prediction]:
    """Top-k labels and probabilities for each image, and its answer; unreadable files get an error, not a crash."""
    files = collect_images(inputs)
    model, data_config = load_run(model_dir)
    views = evaluation_views(eval_transform(data_config), test_time_flips)
    readable, logits, features, unreadable = file_logits(model, views, files, batch_size)
    if not readable:
        path, error = next(iter(unreadable.items()))
        raise UserError(
            f"none of the {len(unreadable)} file(s) is a readable image ({path}: {error}): "
            "give image files or folders of images"
        )
    results = {path: Prediction(str(path), error=error) for path, error in unreadable.items()}
    for path, answer in zip(readable, answers(model, logits, top_k, features)):
        found = (answer.labels, answer.scores, None, answer.answer, answer.familiarity, answer.label_set)
        results[path] = Prediction(str(path), *found)
    return [results[path] for path in files]


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    """Writes predictions as .json (a list of records) or .csv (one row per image): each image's answer (its top
    class, or `unknown` below the run's threshold), the score that threshold applies to, and the top-k."""
    check_predictions_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        records = [
            {
                "path": p.path,
                "answer": p.answer,
                "familiarity": p.familiarity,
                **({"label_set": p.label_set} if p.label_set is not None else {}),
                "predictions": [{"label": l, "score": s} for l, s in zip(p.labels, p.scores)],
                "error": p.error,
            }
            for p in predictions
        ]
        path.write_text(json.dumps(records, indent=2) + "\n")
        return
    k = max((len(p.labels) for p in predictions), default=0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        pairs = [f"{kind}_{i + 1}" for i in range(k) for kind in ("label", "score")]
        # The answer after the top-k pairs: scripts that read the columns by position keep working.
        writer.writerow(["path", *pairs, "answer", "familiarity", "error"])
        for p in predictions:
            cells = [v for pair in zip(p.labels, p.scores) for v in pair]
            familiarity = "" if p.familiarity is None else p.familiarity
            writer.writerow([p.path, *cells, *[""] * (2 * k - len(cells)), p.answer or "", familiarity, p.error or ""])
