"""Fine-tuning, top to bottom: recipe -> data -> model -> transforms -> Trainer -> artefacts."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import Dataset
from torch import nn
from transformers import (
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.config.training_arguments import TrainArguments
from hf_cnn_ft.data.dataset import ImageData, split_labels, split_targets
from hf_cnn_ft.data.inputs import with_pixel_values
from hf_cnn_ft.data.streaming import StreamingImages
from hf_cnn_ft.data.transforms import batch_mixer
from hf_cnn_ft.evaluation.metrics import trainer_compute_metrics
from hf_cnn_ft.evaluation.multi_label import correctness_as_deployed
from hf_cnn_ft.share.claim import claim_output_dir
from hf_cnn_ft.share.push import PushDuringTrainingCallback, PushResult, check_push_access, push_model_dir
from hf_cnn_ft.strategies.class_balance import balanced_label_set_weights, balanced_sample_weights
from hf_cnn_ft.strategies.ema import WeightAverage
from hf_cnn_ft.strategies.registry import get_strategy
from hf_cnn_ft.strategies.unfreezing import fingerprint
from hf_cnn_ft.strategies.wise import START_FILE, apply_wise, keep_the_better
from hf_cnn_ft.training.artefacts import eval_metric_name, write_artefacts
from hf_cnn_ft.training.checkpoint_contents import SelfContainedCheckpoints
from hf_cnn_ft.training.machine import settle_process
from hf_cnn_ft.training.prepare import PreparedModel, prepare_model
from hf_cnn_ft.training.reporting import final_evaluation, fit_on_validation, report_finished_run
from hf_cnn_ft.training.run_start import RunStart, probed_start, start_run, trainer_arguments, with_precision
from hf_cnn_ft.training.trainer import FineTuneTrainer

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: everything is also on disk, in `output_dir`."""

    output_dir: Path
    report: dict[str, Any]  # every metric on the evaluation split (metrics.json holds more)
    evaluated_on: str  # test, or validation when there is no test split
    train_seconds: float
    push: PushResult | None = None
    model: nn.Module | None = None  # the final model, in inference mode (a peft model for adapter runs)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.report


def _validation_metrics(trainer: Trainer) -> dict[str, float]:
    """The validation metrics of the weights as they are now, without logging, callbacks or a
    weight-average swap: the training history stays as it was."""
    loop = trainer.evaluation_loop(trainer.get_eval_dataloader(), "Validation", metric_key_prefix="eval")
    return loop.metrics


def training_images(recipe: Recipe, data: ImageData, augmentation: Callable) -> Dataset | StreamingImages:
    """The training split as the Trainer reads it: a table transformed row by row, or this process's stream."""
    if not recipe.data.streaming:
        return with_pixel_values(data.splits["train"], augmentation)
    args = recipe.training
    return StreamingImages(
        data.splits["train"],
        augmentation,
        args.seed,
        recipe.data.shuffle_buffer,
        args.process_index,
        args.world_size,
        args.dataloader_num_workers,
    )


def _sample_weights(data: ImageData) -> torch.Tensor:
    """Draw weights of the balanced sampler: every class (every label) drawn about equally often."""
    train = data.splits["train"]
    if data.multi_label:
        return balanced_label_set_weights(split_targets(train))
    return balanced_sample_weights(split_labels(train), len(data.label_names))


def build_trainer(
    recipe: Recipe,
    prepared: PreparedModel,
    callbacks: list[TrainerCallback],
    args: TrainArguments | None = None,
    resume: str | None = None,
) -> FineTuneTrainer:
    """The Trainer of the run's fine-tuning phase: datasets, metrics, per-stage rates, loss and sampler; `resume`
    is the checkpoint a resumed run continues from."""
    finetune, data = recipe.finetune, prepared.data
    classes = len(data.label_names)
    return FineTuneTrainer(
        model=prepared.model,
        args=args or recipe.training,
        train_dataset=training_images(recipe, data, prepared.augmentation),
        eval_dataset=with_pixel_values(data.splits["validation"], prepared.evaluation),
        data_collator=default_data_collator,
        compute_metrics=trainer_compute_metrics(data.label_names, data.multi_label),
        callbacks=callbacks,
        loss_weights=prepared.loss_weights,
        backbone_lr_multiplier=finetune.backbone_lr_multiplier,
        lr_decay=finetune.lr_decay,
        sample_weights=_sample_weights(data) if finetune.sampler == "balanced" else None,
        l2sp_alpha=finetune.l2sp_alpha,
        batch_mixer=batch_mixer(recipe.augment, classes),
        unfreeze=prepared.unfreeze,
        lr_restart=finetune.lr_restart,
        weight_average=WeightAverage(finetune.ema_decay, resumed_from=resume) if finetune.ema_decay else None,
        teacher=prepared.teacher,
        distillation=(recipe.signal.distill_weight, recipe.signal.distill_temperature),
        co_tuning=prepared.co_tuning,
        multi_label=data.multi_label,
    )


def _run_callbacks(recipe: Recipe, prepared: PreparedModel, run: RunStart) -> list[TrainerCallback]:
    """The strategy's callbacks, self-contained checkpoints, early stopping, and Hub pushes during training."""
    args, repo_id = recipe.training, run.repo_id
    callbacks = get_strategy(recipe.finetune.strategy).callbacks(recipe)
    callbacks.append(SelfContainedCheckpoints([run.output_dir / START_FILE], run.resume))
    if args.early_stopping_patience is not None and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold))
    if repo_id and recipe.hub.push_strategy != "end":
        callbacks.append(PushDuringTrainingCallback(recipe.hub, repo_id, prepared.data_config))
    return callbacks


def _share_main_process_statistics(trainer: Trainer) -> None:
    """DDP averages gradients, but BatchNorm statistics move on each rank's own batches and are only
    re-broadcast at the next forward pass: take the main process's, as DDP would, so that the test
    evaluation (sharded across ranks) and the saved model use one set of statistics."""
    for buffer in trainer.model.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def _rank_fingerprints(trainer: Trainer) -> list[str]:
    """Every rank must end with the same weights; a DDP bug that lets them drift would go unnoticed."""
    fingerprints = gather_object([fingerprint(trainer.model)])
    if len(set(fingerprints)) > 1:
        logger.error("the %d processes ended with different weights: %s", len(fingerprints), fingerprints)
    return fingerprints


def _interpolate(trainer: Trainer, recipe: Recipe, start: dict[str, torch.Tensor] | None) -> dict[str, Any] | None:
    if start is None or recipe.finetune.wise_alpha is None:
        return None
    args, metric = recipe.training, eval_metric_name(recipe.training)
    return apply_wise(
        trainer.model,
        start,
        recipe.finetune.wise_alpha,
        lambda: _validation_metrics(trainer)[metric],
        metric.removeprefix("eval_"),
        bool(args.greater_is_better),
    )


def _compare_with_probe(
    trainer: Trainer, recipe: Recipe, start: dict[str, torch.Tensor] | None, interpolation: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Keeps the probed model if fine-tuning fell below it. WiSE-FT's auto search already weighed it (alpha 0)."""
    if start is None or not recipe.finetune.probe_candidate or (interpolation or {}).get("chosen_by"):
        return None
    metric, greater = eval_metric_name(recipe.training), bool(recipe.training.greater_is_better)

    def validate() -> tuple[float, np.ndarray]:
        loop = trainer.evaluation_loop(trainer.get_eval_dataloader(), "Validation", metric_key_prefix="eval")
        return loop.metrics[metric], correctness_as_deployed(loop.predictions, loop.label_ids)

    return keep_the_better(trainer.model, start, validate, metric.removeprefix("eval_"), greater)


def train(
    recipe: Recipe,
    callbacks: list[TrainerCallback] | None = None,
    probe_epoch_end: Callable[[dict[str, float]], None] = lambda entry: None,
) -> TrainResult:
    """Runs a whole fine-tuning recipe and writes its artefacts to `training.output_dir`. `callbacks` join the
    Trainer's own (early stopping, unfreezing, weight average, Hub pushes); `probe_epoch_end` hears each
    epoch of the probe phase (its history entry, validation scores included)."""
    args = recipe.training
    settle_process(args)
    set_seed(args.seed)
    is_main = args.process_index == 0
    # A push that cannot work fails now, not after hours of training. Only the main process pushes.
    repo_id = check_push_access(recipe.hub.repo_id) if recipe.hub.repo_id and is_main else None
    # Before any work: the output folder is writable, holds no other run's results, and is ours alone.
    folder = claim_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir, is_main)
    try:
        return _run(recipe, start_run(recipe, folder, repo_id), callbacks or [], probe_epoch_end)
    finally:
        folder.release()


def _run(
    recipe: Recipe, run: RunStart, callbacks: list[TrainerCallback], probe_epoch_end: Callable[[dict[str, float]], None]
) -> TrainResult:
    several = recipe.training.world_size > 1
    prepared = prepare_model(recipe, run.data, run.resume is None, probe_epoch_end)  # a checkpoint holds the probe
    recipe = with_precision(recipe, prepared.precision.precision)
    probed = probed_start(recipe, prepared.model, run)
    callbacks = [*callbacks, *_run_callbacks(recipe, prepared, run)]
    trainer = build_trainer(recipe, prepared, callbacks, trainer_arguments(recipe, run), run.resume)
    started = time.perf_counter()
    if get_strategy(recipe.finetune.strategy).preset.trains:
        trainer.train(resume_from_checkpoint=run.resume)
    if several:
        _share_main_process_statistics(trainer)
    interpolation = _interpolate(trainer, recipe, probed)
    probe_check = _compare_with_probe(trainer, recipe, probed, interpolation)
    train_seconds = prepared.probe_seconds + time.perf_counter() - started  # the choice of alpha included
    fingerprints = _rank_fingerprints(trainer) if several else None
    flips = recipe.augment.test_time_flips
    final = final_evaluation(trainer, prepared.data, prepared.evaluation, flips)
    fits = fit_on_validation(recipe, trainer, prepared.data, prepared.evaluation, flips)
    if trainer.is_world_process_zero():
        extra = {
            "calibration": fits.calibration,
            "unknown_rejection": fits.rejection,
            "label_thresholds": final.label_thresholds,
            "unfreeze_history": prepared.unfreeze.history if prepared.unfreeze else None,
            "rank_weight_fingerprints": fingerprints,
            "weight_interpolation": interpolation,
            "probe_candidate": probe_check,
            "test_time_flips": flips,
            "signal": prepared.signal_findings,
            "precision": dataclasses.asdict(prepared.precision),
            "without_test_time_augmentation": final.plain_report,
        }
        data, evaluated_on = prepared.data, prepared.data.evaluation_split
        write_artefacts(
            recipe,
            data,
            trainer,
            prepared.data_config,
            final.report,
            evaluated_on,
            train_seconds,
            prepared.probe_history,
            run.repo_id,
            extra,
            run.output_dir,
        )
        (run.output_dir / START_FILE).unlink(missing_ok=True)  # only a resumed run needed it
        calibrated = final.logits / (fits.calibration or {}).get("temperature", 1.0)  # as the folded head gives them
        report_finished_run(recipe, trainer.model, prepared.data_config, data, run.output_dir, calibrated)
        run.folder.finish()
    trainer.accelerator.wait_for_everyone()
    output_dir, push = run.folder.output_dir, None
    if run.repo_id:
        hub = recipe.hub
        push = push_model_dir(output_dir, run.repo_id, hub.private, hub.branch, hub.commit_message)
    evaluated_on = prepared.data.evaluation_split
    return TrainResult(output_dir, final.report, evaluated_on, train_seconds, push, trainer.model.eval())
