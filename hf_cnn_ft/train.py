"""Fine-tuning, top to bottom: recipe -> data -> model -> transforms -> Trainer -> artefacts."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import Dataset
from peft import PeftModel
from transformers import (
    EarlyStoppingCallback,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from . import artefacts
from .card import write_model_card
from .cpu_process import prepare_cpu_process
from .data import IMAGE_COLUMN, LABEL_COLUMN, ImageData, load_image_data, to_rgb
from .ema import WeightAverage
from .errors import UserError
from .finetuning import (
    PROBING_STRATEGIES,
    adapt_batchnorm,
    apply_freezing,
    balanced_sample_weights,
    class_loss_weights,
    frozen_stage_names,
    linear_probe,
    resolve_bn_policy,
    validate_strategy,
)
from .hub import PushDuringTrainingCallback, PushResult, check_push_access, push_model_dir
from .image_cache import decode_once
from .lora import apply_adapter, parameter_counts, save_adapter, validate_adapter_recipe
from .metrics import (
    SCALAR_KEYS,
    classification_report,
    plot_confusion_matrix,
    plot_training_curves,
    trainer_compute_metrics,
)
from .models import DataConfig, base_model_id, build_model, is_timm_model, save_model
from .recipe import Recipe, TrainArguments, recipe_to_yaml
from .stage_probe import probe_last_stages
from .trainer import FineTuneTrainer
from .transforms import batch_mixer, eval_transform, evaluation_views, train_transform
from .unfreezing import UnfreezeCallback, build_plan, fingerprint
from .weight_interpolation import START_FILE, apply_wise, load_start, save_start, snapshot

logger = logging.getLogger(__name__)

RESUME_LATEST = {"true", "latest", "last", "yes", "1"}


@dataclass
class TrainResult:
    output_dir: Path
    report: dict[str, Any]
    evaluated_on: str
    train_seconds: float
    push: PushResult | None = None


def with_image_transform(dataset: Dataset, transform) -> Dataset:
    """Applies `transform` lazily, row by row, as the Trainer reads the dataset."""

    def apply(batch: dict[str, list]) -> dict[str, list]:
        return {
            "pixel_values": [transform(to_rgb(image)) for image in batch[IMAGE_COLUMN]],
            "labels": batch[LABEL_COLUMN],
        }

    return dataset.with_transform(apply)


def validate_training_arguments(args: TrainArguments) -> None:
    metric = args.metric_for_best_model
    if metric is not None:
        name = metric.removeprefix("eval_")
        if name not in SCALAR_KEYS and name != "loss":
            raise UserError(
                f"training.metric_for_best_model '{metric}' is not a metric this tool computes; "
                f"use one of: loss, {', '.join(SCALAR_KEYS)}"
            )
    if args.push_to_hub or args.hub_model_id:
        raise UserError(
            "set hub.repo_id instead of training.push_to_hub / hub_model_id: the hub section pushes the model "
            "card and a layout that both transformers and timm load"
        )
    if args.remove_unused_columns:
        raise UserError(
            "training.remove_unused_columns must stay false: the transforms need the raw image column "
            "(transformers #17894)"
        )


def resolve_resume(value: str | None, output_dir: Path, is_main: bool) -> str | None:
    """`true`/`latest` means the last complete checkpoint in the output directory, if any."""
    if value is None or str(value).lower() in {"false", "no", "0", "none", ""}:
        return None
    if str(value).lower() in RESUME_LATEST:
        if is_main:
            for path in artefacts.remove_incomplete_checkpoints(output_dir):
                logger.warning("removed checkpoint %s: it was cut short by a crash", path)
        checkpoint = artefacts.last_complete_checkpoint(output_dir)
        if checkpoint is None:
            logger.warning("no checkpoint to resume from in %s: training from the start", output_dir)
            return None
        logger.info("resuming from %s", checkpoint)
        return str(checkpoint)
    if not Path(value).is_dir():
        raise UserError(f"checkpoint {value} does not exist (use --resume to continue from the latest one)")
    return str(value)


def warn_if_single_process_cpu_launch() -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process unless MPI is set up."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in os.environ:
        return
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    args = [a.decode(errors="replace") for a in parent]
    if "--num_processes" in args and args.index("--num_processes") + 1 < len(args):
        requested = args[args.index("--num_processes") + 1]
        if requested.isdigit() and int(requested) > 1:
            logger.warning(
                "accelerate launch --cpu runs a single process without MPI; for %s CPU processes use "
                "`accelerate launch --multi_gpu --num_processes %s` (it falls back to CPU/gloo) or torchrun",
                requested,
                requested,
            )


def hardware_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _eval_metric_name(args: TrainArguments) -> str:
    """The key of metric_for_best_model (loss if unset) in the Trainer's evaluation metrics."""
    metric = args.metric_for_best_model or "loss"
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def _write_artefacts(
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
) -> None:
    output_dir = Path(recipe.training.output_dir)
    staging = artefacts.staging_dir(output_dir)
    plain_model = trainer.model.get_base_model() if isinstance(trainer.model, PeftModel) else trainer.model
    base_model = base_model_id(recipe.model, plain_model)
    peft_summary = None
    if recipe.peft.peft_method:
        save_adapter(trainer.model, base_model or recipe.model.model, staging)
        trainable, total = parameter_counts(trainer.model)
        peft_summary = {"method": recipe.peft.peft_method, "trainable_parameters": trainable, "total_parameters": total}
    else:
        save_model(trainer.model, data_config, staging)
    metric = _eval_metric_name(recipe.training).removeprefix("eval_")
    plot_confusion_matrix(report, data.label_names, staging / "confusion_matrix.png", title=f"{evaluated_on} split")
    if trainer.state.log_history:
        plot_training_curves(trainer.state.log_history, metric, staging / "training_curves.png")
    if probe_history:
        plot_training_curves(probe_history, "accuracy", staging / "linear_probe_curves.png")
    artefacts.write_text(staging / "recipe.yaml", recipe_to_yaml(recipe))
    if data.skipped:
        lines = [f"{item.split}\t{item.path}\t{item.reason}" for item in data.skipped]
        artefacts.write_text(staging / "skipped_images.tsv", "split\tpath\treason\n" + "\n".join(lines) + "\n")
    summary = {
        "evaluated_on": evaluated_on,
        evaluated_on: report,
        "best_validation": {
            k.removeprefix("eval_"): v
            for k, v in (_best_eval_entry(trainer) or {}).items()
            if k.removeprefix("eval_") in (*SCALAR_KEYS, "loss")
        },
        "label_names": data.label_names,
        "base_model": base_model,
        "peft": peft_summary,
        "library": "timm" if is_timm_model(plain_model) else "transformers",
        "preprocessing": dataclasses.asdict(data_config),
        "split_sizes": {name: len(split) for name, split in data.splits.items()},
        "class_counts": {name: data.class_counts(name) for name in data.splits},
        "skipped_images": len(data.skipped),
        "skipped": [item.__dict__ for item in data.skipped],
        "linear_probe": probe_history[-1] if probe_history else None,
        "linear_probe_history": probe_history,
        "epochs_trained": trainer.state.epoch or 0,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_seconds": round(train_seconds, 2),
        "hardware": hardware_description(),
        "processes": trainer.args.world_size,
        **extra,
    }
    write_model_card(staging, recipe, summary, repo_id=repo_id)
    artefacts.write_json(staging / artefacts.COMPLETION_MARKER, summary)
    artefacts.publish(staging, output_dir)


def _best_eval_entry(trainer: Trainer) -> dict[str, Any] | None:
    if trainer.args.metric_for_best_model is None:
        return None
    key = _eval_metric_name(trainer.args)
    entries = [e for e in trainer.state.log_history if key in e]
    if not entries:
        return None
    pick = max if trainer.args.greater_is_better else min
    return pick(entries, key=lambda e: e[key])


@dataclass
class PreparedModel:
    """The model as the Trainer phase starts from it, and what was made on the way."""

    data: ImageData  # the splits, read from the decode-once cache when it is on
    model: PreTrainedModel
    data_config: DataConfig
    augmentation: Callable
    evaluation: Callable
    loss_weights: torch.Tensor | None
    probe_history: list[dict[str, float]]
    probe_seconds: float
    unfreeze: UnfreezeCallback | None = None


def prepare_model(recipe: Recipe, data: ImageData, run_probe: bool = True) -> PreparedModel:
    """Builds the backbone, runs the linear probe if the strategy has one, and freezes as configured
    (or wraps the model in a peft adapter)."""
    strategy = recipe.finetune
    validate_strategy(strategy)
    validate_adapter_recipe(recipe)
    model, data_config = build_model(recipe.model, data.label_names)
    if recipe.data.decode_cache:
        with recipe.training.main_process_first(desc="decoding the images once"):
            data = decode_once(data, data_config)
    frozen = frozen_stage_names(model, strategy.freeze)
    if recipe.model.channels_last:
        model.to(memory_format=torch.channels_last)
    evaluation = eval_transform(data_config)
    augmentation = train_transform(data_config, recipe.augment)
    loss_weights = class_loss_weights(strategy.class_weights, data.splits["train"][LABEL_COLUMN], data.label_names)
    started = time.perf_counter()
    if strategy.bn_adapt and run_probe:  # a resumed run's checkpoint holds the adapted statistics
        adapted = adapt_batchnorm(
            model,
            data.splits["train"],
            evaluation,
            recipe.training.per_device_eval_batch_size,
            recipe.model.channels_last,
        )
        logger.info(
            "bn_adapt: re-estimated %d BatchNorm layers on %d training images", adapted, len(data.splits["train"])
        )
    pretrained = recipe.model.pretrained or recipe.model.weights is not None
    bn_policy = resolve_bn_policy(strategy.bn, pretrained)
    probe_history: list[dict[str, float]] = []
    if run_probe and strategy.strategy in PROBING_STRATEGIES:
        # Deterministic and identical on every process, so DDP ranks start the Trainer phase in step.
        probe_inputs = (data.splits["train"], data.splits["validation"], augmentation, evaluation, strategy)
        if strategy.probe_stages:
            probe_history = probe_last_stages(
                model,
                *probe_inputs,
                seed=recipe.training.seed,
                train_batchnorm=bn_policy != "frozen",
                channels_last=recipe.model.channels_last,
                loss_weights=loss_weights,
            )
        else:
            probe_history = linear_probe(
                model,
                *probe_inputs,
                seed=recipe.training.seed,
                channels_last=recipe.model.channels_last,
                loss_weights=loss_weights,
            )
    probe_seconds = time.perf_counter() - started
    if recipe.peft.peft_method:
        # An adapter replaces freezing: the base weights stay, adapter + head (+ BatchNorm) train.
        model = apply_adapter(model, recipe.peft, train_batchnorm=strategy.bn in ("auto", "train"))
        trainable, total = parameter_counts(model)
        logger.info(
            "%s: training %s of %s parameters (%.2f%%)",
            recipe.peft.peft_method,
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / total,
        )
        return PreparedModel(
            data, model, data_config, augmentation, evaluation, loss_weights, probe_history, probe_seconds
        )
    plan = build_plan(model, strategy, math.ceil(recipe.training.num_train_epochs))
    if plan is None:
        apply_freezing(model, frozen, bn_policy)
        unfreeze = None
    else:
        unfreeze = UnfreezeCallback(plan, bn_policy, masked=recipe.training.world_size > 1)
        unfreeze.apply(model, 0)  # before the Trainer wraps the model (DDP must see the final trainable set)
    return PreparedModel(
        data, model, data_config, augmentation, evaluation, loss_weights, probe_history, probe_seconds, unfreeze
    )


def _validation_metrics(trainer: Trainer) -> dict[str, float]:
    """The validation metrics of the weights as they are now, without logging, callbacks or a
    weight-average swap: the training history stays as it was."""
    loop = trainer.evaluation_loop(trainer.get_eval_dataloader(), "Validation", metric_key_prefix="eval")
    return loop.metrics


def _final_evaluation(
    trainer: Trainer, data: ImageData, evaluation: Callable, test_time_flips: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The report on the evaluation split, with the logits averaged over the test-time views, and the
    report of the plain view alone when there are several (None otherwise)."""
    split = data.evaluation_split
    # predict() gathers across processes without the padding duplicates of the last batch.
    outputs = [
        trainer.predict(with_image_transform(data.splits[split], view), metric_key_prefix=split)
        for view in evaluation_views(evaluation, test_time_flips)
    ]
    labels = outputs[0].label_ids
    averaged = np.mean([output.predictions for output in outputs], axis=0)
    report = classification_report(averaged, labels, data.label_names)
    if len(outputs) == 1:
        return report, None
    return report, classification_report(outputs[0].predictions, labels, data.label_names)


def train(recipe: Recipe, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Runs a whole fine-tuning recipe and writes its artefacts to `training.output_dir`.

    `callbacks` join the Trainer's own (early stopping, unfreezing, weight average, Hub pushes).
    """
    args = recipe.training
    validate_training_arguments(args)
    warn_if_single_process_cpu_launch()
    if not torch.cuda.is_available():
        prepare_cpu_process(args.keep_freed_memory)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    is_main = args.process_index == 0

    with args.main_process_first(desc="loading the dataset"):
        data = load_image_data(recipe.data)
    for item in data.skipped:
        logger.warning("skipped unreadable image %s (%s)", item.path, item.reason)
    # A push that cannot work fails now, not after hours of training. Only the main process pushes.
    repo_id = check_push_access(recipe.hub) if recipe.hub.repo_id and is_main else None
    resume = resolve_resume(args.resume_from_checkpoint, output_dir, is_main)
    if is_main:
        artefacts.mark_incomplete(output_dir)
    # A resumed run's checkpoint already holds the probed head.
    prepared = prepare_model(recipe, data, run_probe=resume is None)
    data = prepared.data
    model, data_config, strategy = prepared.model, prepared.data_config, recipe.finetune
    augmentation, evaluation, loss_weights = prepared.augmentation, prepared.evaluation, prepared.loss_weights
    probe_history = prepared.probe_history
    wise_start = None
    if strategy.wise_alpha is not None:
        # The start of the interpolation: the probed model, before the Trainer changes anything.
        wise_start = load_start(output_dir) if resume else snapshot(model)
        if is_main and not resume:
            save_start(wise_start, output_dir)

    callbacks = list(callbacks or [])
    if args.early_stopping_patience is not None and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold))
    if repo_id and recipe.hub.push_strategy != "end":
        callbacks.append(PushDuringTrainingCallback(recipe.hub, repo_id, data_config))
    trainer = FineTuneTrainer(
        model=model,
        args=args,
        train_dataset=with_image_transform(data.splits["train"], augmentation),
        eval_dataset=with_image_transform(data.splits["validation"], evaluation),
        data_collator=default_data_collator,
        compute_metrics=trainer_compute_metrics(data.label_names),
        callbacks=callbacks,
        loss_weights=loss_weights,
        backbone_lr_multiplier=strategy.backbone_lr_multiplier,
        lr_decay=strategy.lr_decay,
        sample_weights=(
            balanced_sample_weights(data.splits["train"][LABEL_COLUMN], len(data.label_names))
            if strategy.sampler == "balanced"
            else None
        ),
        l2sp_alpha=strategy.l2sp_alpha,
        batch_mixer=batch_mixer(recipe.augment, len(data.label_names)),
        unfreeze=prepared.unfreeze,
        lr_restart=strategy.lr_restart,
        weight_average=WeightAverage(strategy.ema_decay) if strategy.ema_decay else None,
    )
    started = time.perf_counter()
    if strategy.strategy != "linear_probe":
        trainer.train(resume_from_checkpoint=resume)

    fingerprints, interpolation = None, None
    if args.world_size > 1:
        # DDP averages gradients, but BatchNorm statistics move on each rank's own batches and are only
        # re-broadcast at the next forward pass: take the main process's, as DDP would, so that the
        # test evaluation (sharded across ranks) and the saved model use one set of statistics.
        for buffer in trainer.model.buffers():
            torch.distributed.broadcast(buffer.data, src=0)
    if wise_start is not None:
        metric = _eval_metric_name(args)
        interpolation = apply_wise(
            trainer.model,
            wise_start,
            strategy.wise_alpha,
            lambda: _validation_metrics(trainer)[metric],
            metric.removeprefix("eval_"),
            bool(args.greater_is_better),
        )
    train_seconds = prepared.probe_seconds + time.perf_counter() - started  # the choice of alpha included
    if args.world_size > 1:
        # Every rank must end with the same weights; a DDP bug that lets them drift would go unnoticed.
        fingerprints = gather_object([fingerprint(trainer.model)])
        if len(set(fingerprints)) > 1:
            logger.error("the %d processes ended with different weights: %s", len(fingerprints), fingerprints)
    evaluated_on = data.evaluation_split
    report, plain_report = _final_evaluation(trainer, data, evaluation, recipe.augment.test_time_flips)
    push = None
    if trainer.is_world_process_zero():
        extra = {
            "unfreeze_history": prepared.unfreeze.history if prepared.unfreeze else None,
            "rank_weight_fingerprints": fingerprints,
            "weight_interpolation": interpolation,
            "test_time_flips": recipe.augment.test_time_flips,
            "without_test_time_augmentation": plain_report,
        }
        _write_artefacts(
            recipe, data, trainer, data_config, report, evaluated_on, train_seconds, probe_history, repo_id, extra
        )
        (output_dir / START_FILE).unlink(missing_ok=True)  # only a resumed run needed it
    trainer.accelerator.wait_for_everyone()
    if repo_id:
        hub = recipe.hub
        push = push_model_dir(output_dir, repo_id, hub.private, hub.branch, hub.commit_message)
    return TrainResult(output_dir, report, evaluated_on, train_seconds, push)
