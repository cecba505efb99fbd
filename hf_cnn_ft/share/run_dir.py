"""The run directory: what a run writes, how it is found again (resume, recipe, model, adapter).

Artefacts are written so that a crash never leaves an output directory looking complete.

Everything is first written under a hidden staging folder and then moved into place file by
file with `os.replace` (atomic on one filesystem). `metrics.json` moves last: its presence is
what marks a run as finished.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from hf_cnn_ft.config.checkpoints import (
    NO_RESUME,
    RESUME_LATEST,
    checkpoint_problem,
    checkpoints,
    last_complete_checkpoint,
)
from hf_cnn_ft.config.recipe import Recipe, load_recipe
from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.models.io import (
    FOLDED_TEMPERATURE,
    UNKNOWN_REJECTION,
    attach_familiarity,
    fold_temperature,
    load_model,
    save_model,
    set_label_thresholds,
)
from hf_cnn_ft.models.precision import set_run_precision
from hf_cnn_ft.share.card import write_model_card
from hf_cnn_ft.share.exports.exported import is_export, load_export
from hf_cnn_ft.share.run_summary import COMPLETION_MARKER, read_summary, write_summary
from hf_cnn_ft.strategies.adapters import is_adapter_dir

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
EXAMPLES_DIR = "examples"  # a few test images for the demo page (`hf-cnn-ft app`)


def mark_incomplete(output_dir: Path) -> None:
    """Called when a run starts: an older run's completion marker must not outlive it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / COMPLETION_MARKER).unlink(missing_ok=True)
    shutil.rmtree(output_dir / STAGING_DIR, ignore_errors=True)


def staging_dir(output_dir: Path) -> Path:
    path = output_dir / STAGING_DIR
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def publish(staging: Path, output_dir: Path) -> None:
    """Moves every staged file and folder into `output_dir` (a folder replaces the older one whole), the
    completion marker last."""
    for path in sorted(staging.iterdir(), key=lambda p: (p.name == COMPLETION_MARKER, p.name)):
        if path.is_dir():
            shutil.rmtree(output_dir / path.name, ignore_errors=True)
        os.replace(path, output_dir / path.name)
    shutil.rmtree(staging, ignore_errors=True)


def example_images(directory: Path) -> list[Path]:
    """The test images a run saved for its demo page, in name order."""
    folder = directory / EXAMPLES_DIR
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def remove_incomplete_checkpoints(output_dir: Path) -> dict[Path, str]:
    """Deletes checkpoints a crash cut short or a disk damaged, so the resumed run can rewrite them; returns
    each with what was wrong."""
    removed = {p: problem for p in checkpoints(output_dir) if (problem := checkpoint_problem(p))}
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def load_adapter_dir(directory: str | Path) -> tuple[PeftModel, DataConfig]:
    """The base model rebuilt from the run's recipe, with the adapter loaded onto it."""
    directory = Path(directory)
    recipe_path, metrics_path = directory / "recipe.yaml", directory / COMPLETION_MARKER
    if not recipe_path.is_file() or not metrics_path.is_file():
        raise UserError(
            f"{directory} holds an adapter but no recipe.yaml/{COMPLETION_MARKER} to rebuild its base model from"
        )
    recipe, summary = load_recipe(recipe_path), read_summary(directory)
    base, _ = build_model(recipe.model, summary.label_names, multi_label=summary.label_thresholds is not None)
    data_config = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in summary.preprocessing.items()})
    try:
        model = PeftModel.from_pretrained(base, directory)
    except Exception as exc:  # peft raises several types for an adapter that does not fit the base
        raise UserError(
            f"the adapter in {directory} does not fit its base model '{recipe.model.model}' ({exc})"
        ) from None
    return model.eval(), data_config


def merge_adapter_dir(directory: str | Path, output: str | Path) -> Path:
    """Writes a plain model directory (adapter merged into the weights) with the run's other artefacts."""
    directory, output = Path(directory), Path(output)
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output} already exists and is not empty: choose a new directory for the merged model")
    model, data_config = load_adapter_dir(directory)
    merged = model.merge_and_unload()
    _restore_fits(merged, directory)
    output.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        save_model(merged, data_config, output)
    for path in directory.iterdir():
        copied = path.is_file() and path.name != COMPLETION_MARKER and not path.name.startswith(("adapter_", "."))
        if copied and not (output / path.name).exists():
            shutil.copy2(path, output / path.name)
    if (directory / EXAMPLES_DIR).is_dir():
        shutil.copytree(directory / EXAMPLES_DIR, output / EXAMPLES_DIR)
    adapter_summary = read_summary(directory)
    summary = replace(adapter_summary, peft={**adapter_summary.peft, "merged": True})
    write_model_card(output, load_recipe(output / "recipe.yaml"), summary)
    write_summary(output, summary)  # last: the merged directory is complete
    return output


def add_to_run(output_dir: Path, key: str, finding: dict[str, Any]) -> None:
    """Records a finding about a finished run (its `report`, the `search` that found its recipe), written
    beside the run's files, in metrics.json and the model card."""
    summary = read_summary(output_dir).with_finding(key, finding)
    write_model_card(output_dir, load_recipe(output_dir / "recipe.yaml"), summary)
    write_summary(output_dir, summary)


def _restore_fits(merged: PreTrainedModel, adapter_dir: Path) -> None:
    """An adapter directory has no model config: what was fitted on validation when the run ended lives in the
    run's summary: the temperature its head was divided by (the head itself, saved with the adapter, is already
    calibrated), a multi-label run's thresholds, and the "unknown" threshold."""
    summary = read_summary(adapter_dir)
    if summary.label_thresholds:
        set_label_thresholds(merged, list(summary.label_thresholds["thresholds"].values()))
    rejection = dict(summary.unknown_rejection or {})
    if rejection.pop("fitted", False):
        setattr(merged.config, UNKNOWN_REJECTION, rejection)
    calibration = summary.calibration or {}
    if calibration.get("folded_into_head"):
        setattr(merged.config, FOLDED_TEMPERATURE, calibration["temperature"])
    elif calibration.get("temperature", 1.0) != 1.0:  # an earlier version's run: fold it now
        fold_temperature(merged, calibration["temperature"])


def load_run(directory: str | Path) -> tuple[PreTrainedModel, DataConfig]:
    """A fine-tuned model directory, adapter run or Hub repo, in inference mode; an adapter is loaded
    onto its base model and merged. An export folder (or a model file in one) is run by its own runtime."""
    if is_export(directory):
        return load_export(directory)  # type: ignore[return-value]  (the interface evaluation uses)
    if is_adapter_dir(directory):
        adapted, data_config = load_adapter_dir(directory)
        model = adapted.merge_and_unload().eval()
        _restore_fits(model, Path(directory))
        attach_familiarity(model, directory)
    else:
        model, data_config = load_model(directory)
    recipe = saved_recipe(directory) if Path(directory).is_dir() else None
    return set_run_precision(model, recipe.training.precision if recipe else "fp32"), data_config


def saved_recipe(model_dir: str | Path) -> Recipe | None:
    """The recipe of the run that wrote `model_dir`, if it is a local directory that holds one."""
    folder = Path(model_dir).parent if Path(model_dir).is_file() else Path(model_dir)  # a model file of an export
    saved = folder / "recipe.yaml"
    return load_recipe(saved) if saved.is_file() else None


def test_time_flips_for(model_dir: str | Path, flips: str | None) -> str:
    """`flips` if given, else the test-time flips of the run that wrote `model_dir` (none without a recipe)."""
    if flips is not None:
        return flips
    recipe = saved_recipe(model_dir)
    return recipe.augment.test_time_flips if recipe else "none"


def data_arguments_for(model_dir: Path, dataset: str | None) -> DataArguments:
    """The data section of the run that wrote `model_dir`, pointed at `dataset` if given.

    Reusing the run's split settings means `evaluate` sees exactly the test images that
    training held out.
    """
    saved = (model_dir.parent if model_dir.is_file() else model_dir) / "recipe.yaml"
    recipe = saved_recipe(model_dir)
    args = recipe.data if recipe else DataArguments()
    if dataset is not None:
        args = replace(args, dataset=dataset)
    if not args.dataset:
        raise UserError(f"no dataset given and {saved} does not name one: pass --data PATH_OR_HUB_ID")
    return args


def resolve_resume(value: str | None, output_dir: Path, is_main: bool) -> str | None:
    """`true`/`latest` means the last complete checkpoint in the output directory (the recipe checks made
    sure there is one); checkpoints a crash cut short are removed first."""
    if value is None or str(value).lower() in NO_RESUME:
        return None
    if str(value).lower() not in RESUME_LATEST:
        return str(value)  # checked when the recipe loaded
    if is_main:
        for path, problem in remove_incomplete_checkpoints(output_dir).items():
            logger.warning("removed checkpoint %s: it cannot be resumed from (%s)", path, problem)
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        raise UserError(f"--resume: no complete checkpoint in {output_dir} to resume from")
    logger.info("resuming from %s", checkpoint)
    return str(checkpoint)
