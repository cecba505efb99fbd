"""Predicting the classes of image files with a fine-tuned model directory."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from hf_cnn_ft.config.paths import check_predictions_path, collect_images
from hf_cnn_ft.data.inputs import view_pixel_values
from hf_cnn_ft.data.transforms import eval_transform, evaluation_views
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.views import mean_logits
from hf_cnn_ft.models.io import temperature_of
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


def predict_files(
    model_dir: str | Path,
    inputs: Sequence[str | Path],
    top_k: int = 3,
    batch_size: int = 32,
    test_time_flips: str = "none",
) -> list[Prediction]:
    """Top-k labels and probabilities for each image (from logits averaged over the test-time views);
    unreadable files get an error, not a crash."""
    files = collect_images(inputs)
    model, data_config = load_run(model_dir)
    temperature = temperature_of(model)  # calibrated probabilities; the ranking is the logits'
    views = evaluation_views(eval_transform(data_config), test_time_flips)
    top_k = max(1, min(top_k, model.config.num_labels))
    results: list[Prediction] = []
    for chunk in _batches(files, batch_size):
        images, readable = [], []
        for path in chunk:
            try:
                with Image.open(path) as image:
                    image.load()
                images.append(image)
                readable.append(Prediction(str(path)))
            except Exception as exc:  # PIL raises many types for a bad file
                results.append(Prediction(str(path), error=f"{type(exc).__name__}: {exc}".splitlines()[0]))
        if not images:
            continue
        with torch.inference_mode():
            probabilities = (mean_logits(model, view_pixel_values(images, views)) / temperature).softmax(-1)
        scores, indices = probabilities.topk(top_k, dim=-1)
        for prediction, row_scores, row_indices in zip(readable, scores.tolist(), indices.tolist()):
            prediction.labels = [model.config.id2label[i] for i in row_indices]
            prediction.scores = [round(s, 6) for s in row_scores]
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
