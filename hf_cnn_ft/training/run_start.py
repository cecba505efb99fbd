"""The start of a run, before the model is built: its folder claimed, its data loaded, the checkpoint it resumes
from found, and (for a probing strategy) the probed model kept as the candidate the end compares with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hf_cnn_ft.config.checkpoints import resume_dir
from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.config.training_arguments import TrainArguments
from hf_cnn_ft.data.dataset import ImageData
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.share import run_dir as artefacts
from hf_cnn_ft.share.claim import RunFolder
from hf_cnn_ft.share.run_dir import resolve_resume
from hf_cnn_ft.strategies.registry import get_strategy
from hf_cnn_ft.strategies.wise import load_start, save_start, snapshot


@dataclass
class RunStart:
    """What is settled before the model is built: the folders, the data, the Hub target, the checkpoint to
    resume."""

    folder: RunFolder
    data: ImageData
    repo_id: str | None
    resume: str | None

    @property
    def output_dir(self) -> Path:
        """Where the run writes while it works (the replacement folder of a run that replaces another)."""
        return self.folder.work_dir


def start_run(recipe: Recipe, folder: RunFolder, repo_id: str | None) -> RunStart:
    """Loads the data, checks the checkpoint to resume, and marks the output unfinished."""
    args = recipe.training
    is_main = args.process_index == 0
    with args.main_process_first(desc="loading the dataset"):
        # With the decode-once cache, building it is the pass that finds unreadable images.
        data = load_image_data(recipe.data, check_images=recipe.data.check_images and not recipe.data.decode_cache)
    checkpoints_at = resume_dir(folder.output_dir, args.overwrite_output_dir)
    resume = resolve_resume(args.resume_from_checkpoint, checkpoints_at, is_main)
    if is_main:
        artefacts.mark_incomplete(folder.work_dir)
    return RunStart(folder, data, repo_id, resume)


def with_precision(recipe: Recipe, precision: str) -> Recipe:
    """The recipe with training.precision as the run settled it (auto's choice): what its Trainer runs in and
    what its saved recipe.yaml reproduces."""
    if recipe.training.precision == precision:
        return recipe
    return dataclasses.replace(recipe, training=dataclasses.replace(recipe.training, precision=precision))


def trainer_arguments(recipe: Recipe, run: RunStart) -> TrainArguments:
    """The recipe's training arguments, writing into the folder the run works in."""
    if not run.folder.replaces:
        return recipe.training
    return dataclasses.replace(recipe.training, output_dir=str(run.output_dir))


def probed_start(recipe: Recipe, model: nn.Module, run: RunStart) -> dict[str, torch.Tensor] | None:
    """The probed model, before the Trainer changes anything: the start of the WiSE-FT interpolation and
    the candidate that the fine-tuned model must beat (None for strategies without a probe and a Trainer phase)."""
    finetune = recipe.finetune
    preset = get_strategy(finetune.strategy).preset
    if not (preset.probes and preset.trains) or (finetune.wise_alpha is None and not finetune.probe_candidate):
        return None
    if run.resume:
        return load_start(Path(run.resume), run.output_dir)
    start = snapshot(model)
    if recipe.training.process_index == 0:
        save_start(start, run.output_dir)
    return start
