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
from hf_cnn_ft.evaluation.views import mean_logits
from hf_cnn_ft.share.run_dir import load_run


@dataclass
class Prediction:
    path: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None


def _batches(items: list[Path], size: int) -> Iterable[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def top_k_predictions(
    model: PreTrainedModel, views: Sequence[Transform], images: Sequence[Image.Image], top_k: int
) -> list[tuple[list[str], list[float]]]:
    """(labels, probabilities) of the `top_k` classes of each image: logits averaged over the test-time
    views (calibrated probabilities where the run folded a temperature into its head)."""
    with torch.inference_mode():
        logits = mean_logits(model, view_pixel_values(images, views))
    scores, indices = logits.softmax(-1).topk(max(1, min(top_k, model.config.num_labels)), dim=-1)
    return [
        ([model.config.id2label[i] for i in row_indices], [round(s, 6) for s in row_scores])
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist())
    ]


def predict_files(
    model_dir: str | Path,
    inputs: Sequence[str | Path],
    top_k: int = 3,
    batch_size: int = 32,
    test_time_flips: str = "none",
) -> list[Prediction]:
    """Top-k labels and probabilities for each image; unreadable files get an error, not a crash."""
    files = collect_images(inputs)
    model, data_config = load_run(model_dir)
    views = evaluation_views(eval_transform(data_config), test_time_flips)
    results: list[Prediction] = []
    for chunk in _batches(files, batch_size):
        images, readable = [], []
        for path in chunk:
            try:
                images.append(open_image(path))
                readable.append(Prediction(str(path)))
            except ValueError as exc:
                results.append(Prediction(str(path), error=str(exc)))
        if not images:
            continue
        for prediction, (labels, scores) in zip(readable, top_k_predictions(model, views, images, top_k)):
            prediction.labels, prediction.scores = labels, scores
            results.append(prediction)
    if all(r.error for r in results):
        raise UserError(
            f"none of the {len(results)} file(s) is a readable image ({results[0].path}: {results[0].error}): "
            "give image files or folders of images"
        )
    order = {str(p): i for i, p in enumerate(files)}
    return sorted(results, key=lambda r: order.get(r.path, 0))


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    """Writes predictions as .json (a list of records) or .csv (one row per image)."""
    check_predictions_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        records = [
            {
                "path": p.path,
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
        writer.writerow(["path", *[f"{kind}_{i + 1}" for i in range(k) for kind in ("label", "score")], "error"])
        for p in predictions:
            cells = [v for pair in zip(p.labels, p.scores) for v in pair]
            writer.writerow([p.path, *cells, *[""] * (2 * k - len(cells)), p.error or ""])
