"""The model behind a demo page: a run directory, adapter run or Hub repo, loaded once, and what the page
shows of it (calibrated top-k, Grad-CAM, the headline figures, the run's example images)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import PreTrainedModel

from hf_cnn_ft.config.paths import check_model_location
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.inputs import Transform
from hf_cnn_ft.data.transforms import eval_transform, evaluation_views
from hf_cnn_ft.errors import UserError, first_line
from hf_cnn_ft.evaluation.gradcam import grad_cam_views
from hf_cnn_ft.evaluation.predict import Answer, top_k_predictions
from hf_cnn_ft.evaluation.report_plots import heat_overlay
from hf_cnn_ft.models.hub import repo_snapshot
from hf_cnn_ft.models.io import folded_temperature_of, label_names_of
from hf_cnn_ft.share.run_dir import example_images, load_run, test_time_flips_for
from hf_cnn_ft.share.run_summary import COMPLETION_MARKER, RunSummary, read_summary

logger = logging.getLogger(__name__)


@dataclass
class DemoModel:
    name: str  # the run directory's name or the repo id
    model: PreTrainedModel
    data_config: DataConfig
    views: list[Transform]  # the run's test-time views: the page predicts exactly as `hf-cnn-ft predict`
    summary: RunSummary | None  # the run's metrics.json (None for a model pushed without one)
    examples: list[Path]


def load_demo_model(source: str) -> DemoModel:
    """Loads a run directory, adapter run or Hub model repo (downloaded whole, or the cached copy offline)."""
    folder = Path(source) if check_model_location(source) else Path(repo_snapshot(source))
    model, data_config = load_run(folder)
    return DemoModel(
        name=source if not Path(source).is_dir() else Path(source).resolve().name,
        model=model,
        data_config=data_config,
        views=evaluation_views(eval_transform(data_config), test_time_flips_for(folder, None)),
        summary=read_summary(folder) if (folder / COMPLETION_MARKER).is_file() else None,
        examples=example_images(folder),
    )


def classify(demo: DemoModel, image: Image.Image, top_k: int) -> Answer:
    """The `top_k` most likely classes with their probabilities, most likely first, and the answer (the top class,
    or unknown below the run's threshold)."""
    return top_k_predictions(demo.model, demo.views, [image], top_k)[0]


def explain(demo: DemoModel, image: Image.Image, label: str) -> np.ndarray | None:
    """The model's view of the image beside it under the Grad-CAM of `label` (uint8 RGB); None for a model
    whose backbone has no feature map to explain."""
    target = label_names_of(demo.model).index(label)
    try:
        shown, heat = grad_cam_views(demo.model, demo.data_config, [image], [target])
    except UserError as exc:
        logger.warning("no Grad-CAM for %s: %s", demo.name, first_line(exc))
        return None
    return np.concatenate([np.round(255 * shown[0]).astype(np.uint8), heat_overlay(shown[0], heat[0])], axis=1)


def headline(demo: DemoModel) -> str:
    """The model card's headline figures, as Markdown: what it is, its classes, how well it did on test."""
    summary, names = demo.summary, label_names_of(demo.model)
    base = summary.base_model if summary else None
    architecture = getattr(demo.model.config, "architecture", None) or demo.model.config.model_type
    origin = f"Fine-tuned from **{base}**" if base else f"A **{architecture}** fine-tuned"
    lines = [f"# {demo.name}", f"{origin} with hf-cnn-ft."]
    lines.append(f"{len(names)} classes: {', '.join(names)}.")
    if summary:
        split, report = summary.evaluated_on, summary.evaluation
        lines.append(
            f"On its held-out {split} split ({report['num_samples']} images): accuracy "
            f"**{report['accuracy']:.3f}**, macro-F1 **{report['f1_macro']:.3f}**."
        )
    temperature = folded_temperature_of(demo.model)
    if temperature != 1.0:
        lines.append(f"Probabilities are calibrated (temperature {temperature:.2f}, fitted on the validation split).")
    return "\n\n".join(lines)
