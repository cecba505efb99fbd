"""Writing a finished run's artefacts: model, plots, recipe, card and metrics.json, the marker last."""

from __future__ import annotations

import dataclasses
import itertools
import platform
import re
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import Trainer

from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.config.training_arguments import TrainArguments
from hf_cnn_ft.config.writing import recipe_to_yaml
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import IMAGE_COLUMN, ImageData, split_strata
from hf_cnn_ft.data.images import to_rgb
from hf_cnn_ft.evaluation.metrics import MULTI_LABEL_SCALARS
from hf_cnn_ft.evaluation.plots import plot_confusion_matrix, plot_training_curves
from hf_cnn_ft.models.anatomy import is_timm_model
from hf_cnn_ft.models.build import base_model_id
from hf_cnn_ft.models.io import save_familiarity, save_model
from hf_cnn_ft.share import run_dir as artefacts
from hf_cnn_ft.share.atomic import write_text
from hf_cnn_ft.share.card import write_model_card
from hf_cnn_ft.share.run_summary import RunSummary, write_summary
from hf_cnn_ft.strategies.adapters import parameter_counts, save_adapter

EXAMPLE_EDGE = 512  # the demo page shows the images, the model sees its own crop of them


def hardware_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def eval_metric_name(training: TrainArguments) -> str:
    """The key of metric_for_best_model (loss if unset) in the Trainer's evaluation metrics."""
    metric = training.metric_for_best_model or "loss"
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def with_input_of(recipe: Recipe, data_config: DataConfig) -> Recipe:
    """The recipe with the input size, crop and crop mode the run used (the model's own or chosen for tiny
    images where the recipe left them unset): training again from the saved recipe.yaml sees the same pixels."""
    model = dataclasses.replace(
        recipe.model,
        image_size=data_config.input_size,
        crop_pct=data_config.crop_pct,
        crop_mode=data_config.crop_mode,
    )
    return dataclasses.replace(recipe, model=model)


def write_artefacts(
    recipe: Recipe,
    data: ImageData,
    trainer: Trainer,
    data_config: DataConfig,
    report: dict[str, Any],
    evaluated_on: str,
    train_seconds: float,
    probe_history: list[dict[str, float]],
    repo_id: str | None,
    extra: dict[str, Any],
    output_dir: Path,
) -> None:
    staging = artefacts.staging_dir(output_dir)
    plain_model = trainer.model.get_base_model() if isinstance(trainer.model, PeftModel) else trainer.model
    base_model = base_model_id(recipe.model, plain_model)
    peft_summary = _save_weights(recipe, trainer.model, data_config, base_model, staging)
    _write_pictures(recipe, trainer, data, report, evaluated_on, probe_history, staging)
    _write_examples(data, evaluated_on, recipe.report.example_images, staging / artefacts.EXAMPLES_DIR)
    write_text(staging / "recipe.yaml", recipe_to_yaml(with_input_of(recipe, data_config)))
    if data.skipped:
        lines = [f"{item.split}\t{item.path}\t{item.reason}" for item in data.skipped]
        write_text(staging / "skipped_images.tsv", "split\tpath\treason\n" + "\n".join(lines) + "\n")
    summary = RunSummary(
        evaluated_on=evaluated_on,
        evaluation=report,
        best_validation={
            k.removeprefix("eval_"): v
            for k, v in (_best_eval_entry(trainer) or {}).items()
            if k.removeprefix("eval_") in (*MULTI_LABEL_SCALARS, "top5_accuracy", "loss")
        },
        label_names=data.label_names,
        base_model=base_model,
        peft=peft_summary,
        library="timm" if is_timm_model(plain_model) else "transformers",
        preprocessing=dataclasses.asdict(data_config),
        split_sizes=data.split_sizes(),
        class_counts={name: data.class_counts(name) for name in data.splits},
        skipped_images=len(data.skipped),
        skipped=[item.__dict__ for item in data.skipped],
        duplicates=data.duplicates,
        linear_probe=probe_history[-1] if probe_history else None,
        linear_probe_history=probe_history,
        epochs_trained=trainer.state.epoch or 0,
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_seconds=round(train_seconds, 2),
        hardware=hardware_description(),
        processes=trainer.args.world_size,
        **extra,
    )
    write_model_card(staging, recipe, summary, repo_id=repo_id)
    write_summary(staging, summary)
    artefacts.publish(staging, output_dir)


def _best_eval_entry(trainer: Trainer) -> dict[str, Any] | None:
    if trainer.args.metric_for_best_model is None:
        return None
    key = eval_metric_name(trainer.args)
    entries = [e for e in trainer.state.log_history if key in e]
    if not entries:
        return None
    pick = max if trainer.args.greater_is_better else min
    return pick(entries, key=lambda e: e[key])


def _save_weights(
    recipe: Recipe, model: nn.Module, data_config: DataConfig, base_model: str | None, staging: Path
) -> dict[str, Any] | None:
    """Saves the model (or the peft adapter, whose summary is returned) into the staging folder."""
    if not recipe.peft.peft_method:
        save_model(model, data_config, staging)
        return None
    save_adapter(model, base_model or recipe.model.model, staging)
    save_familiarity(model, staging)
    trainable, total = parameter_counts(model)
    return {"method": recipe.peft.peft_method, "trainable_parameters": trainable, "total_parameters": total}


def _write_pictures(
    recipe: Recipe,
    trainer: Trainer,
    data: ImageData,
    report: dict[str, Any],
    evaluated_on: str,
    probe_history: list[dict[str, float]],
    staging: Path,
) -> None:
    metric = eval_metric_name(recipe.training).removeprefix("eval_")
    if "confusion_matrix" in report:  # a multi-label report has none: an image has several true labels
        plot_confusion_matrix(report, data.label_names, staging / "confusion_matrix.png", title=f"{evaluated_on} split")
    if trainer.state.log_history:
        kept = "best" if trainer.args.load_best_model_at_end else "last"
        plot_training_curves(trainer.state.log_history, metric, staging / "training_curves.png", kept)
    if probe_history:
        plot_training_curves(probe_history, "accuracy", staging / "linear_probe_curves.png", kept="last")


def _write_examples(data: ImageData, split: str, count: int, folder: Path) -> None:
    """Saves up to `count` images of the evaluated split, taking the classes in turn, for the demo page."""
    labels = split_strata(data.splits[split]).tolist()  # of a multi-label image, its rarest label
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):  # one pass, whatever the number of classes
        by_class.setdefault(label, []).append(index)
    rounds = itertools.zip_longest(*(by_class[label] for label in sorted(by_class)))  # one image of each class
    chosen = list(itertools.islice((i for round_ in rounds for i in round_ if i is not None), count))
    if not chosen:
        return
    folder.mkdir()
    for number, index in enumerate(chosen, start=1):
        name = re.sub(r"[^\w.-]+", "_", data.label_names[labels[index]]).strip("_") or "image"
        image = to_rgb(data.splits[split][index][IMAGE_COLUMN])
        image.thumbnail((EXAMPLE_EDGE, EXAMPLE_EDGE))
        image.save(folder / f"{number:02d}_{name}.png")
