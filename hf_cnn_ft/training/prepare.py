"""The model as the fine-tuning phase starts from it: built, its images decoded once, probed (with what the
`signal` section adds: unlabeled images, an ensemble teacher, the pretrained head), frozen or wrapped in an
adapter as the recipe says."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel

from hf_cnn_ft.config.multi_label import multi_label_conflict
from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import ImageData, split_labels, split_targets
from hf_cnn_ft.data.decode import decode_once
from hf_cnn_ft.data.transforms import eval_transform, train_transform
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.classification_report import macro_f1
from hf_cnn_ft.evaluation.multi_label import multi_label_macro_f1
from hf_cnn_ft.models.build import build_model, pretrained_head
from hf_cnn_ft.models.precision import PrecisionChoice, choose_precision
from hf_cnn_ft.strategies.adapters import apply_adapter, parameter_counts
from hf_cnn_ft.strategies.class_balance import class_loss_weights, label_pos_weights
from hf_cnn_ft.strategies.co_tuning import CoTuning, fit_co_tuning
from hf_cnn_ft.strategies.extra_signal import ExtraSignal, prepare_teacher
from hf_cnn_ft.strategies.freezing import adapt_batchnorm, apply_freezing, frozen_stage_names
from hf_cnn_ft.strategies.probe import ProbeInputs
from hf_cnn_ft.strategies.registry import get_strategy
from hf_cnn_ft.strategies.shared_features import features_key
from hf_cnn_ft.strategies.teachers import TeacherModel
from hf_cnn_ft.strategies.unfreezing import UnfreezeCallback, build_plan

logger = logging.getLogger(__name__)


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
    signal_findings: dict[str, Any] | None = None  # what the unlabeled pool and the teacher gave the probe
    teacher: TeacherModel | None = None  # distilled while the whole network trains (signal.teachers)
    co_tuning: CoTuning | None = None
    precision: PrecisionChoice | None = None  # what training.precision settled to, and why


def prepare_model(
    recipe: Recipe,
    data: ImageData,
    run_probe: bool = True,
    probe_epoch_end: Callable[[dict[str, float]], None] = lambda entry: None,
) -> PreparedModel:
    """Builds the backbone, runs the strategy's probe phase (unless resuming), and freezes as configured
    (or wraps the model in a peft adapter); the strategy's own hook has the last word."""
    finetune = recipe.finetune
    strategy = get_strategy(finetune.strategy)
    metric = recipe.training.metric_for_best_model
    if data.multi_label and (conflict := multi_label_conflict(recipe.data, recipe.signal, metric)):
        raise UserError(f"{data.source}: the label column holds several labels per image; {conflict}")
    model, data_config = build_model(recipe.model, data.label_names, data.typical_short_side(), data.multi_label)
    if recipe.data.decode_cache:
        with recipe.training.main_process_first(desc="decoding the images once"):
            streamed = ("train",) if recipe.data.streaming else ()
            data = decode_once(data, data_config, workers=recipe.data.preprocessing_num_workers, keep=streamed)
    frozen = frozen_stage_names(model, finetune.freeze)  # checked against the model before anything long
    if recipe.model.channels_last:
        model.to(memory_format=torch.channels_last)
    precision = settle_precision(recipe, model, data_config, strategy.preset.trains)
    evaluation = eval_transform(data_config)
    augmentation = train_transform(data_config, recipe.augment)
    loss_weights = run_loss_weights(finetune.class_weights, data)
    bn_policy = finetune.bn  # settled at load: auto is frozen or train by now
    started = time.perf_counter()
    probe_history: list[dict[str, float]] = []
    transforms = (augmentation, evaluation)
    probe = _probe_inputs(
        recipe, model, data, data_config, transforms, loss_weights, probe_epoch_end, precision.precision
    )
    if run_probe:  # a resumed run's checkpoint holds the adapted statistics and the probed head
        if finetune.bn_adapt:
            _adapt_batchnorm(model, data, evaluation, recipe)
        if strategy.preset.probes:
            # Deterministic and identical on every process, so DDP ranks start the Trainer phase in step.
            probe_history = strategy.probe(model, probe)
    if recipe.signal.teachers and strategy.preset.trains:
        prepare_teacher(model, probe)  # fitted by the probe already, unless the run resumed
    co_tuning = _co_tuning(recipe, model, data.splits["train"], evaluation) if recipe.signal.co_tuning_weight else None
    probe_seconds = time.perf_counter() - started
    model, unfreeze = _set_trainable(model, recipe, frozen, bn_policy)
    strategy.prepare(model, recipe)
    prepared = (data, model, data_config, augmentation, evaluation, loss_weights, probe_history, probe_seconds)
    signal = probe.signal
    return PreparedModel(*prepared, unfreeze, signal.findings or None, signal.teacher, co_tuning, precision)


def run_loss_weights(setting: str | dict[str, float] | None, data: ImageData) -> torch.Tensor | None:
    """finetune.class_weights as the loss takes them: per class, or of a multi-label run per label's positives."""
    train = data.splits["train"]
    if data.multi_label:
        return label_pos_weights(setting, split_targets(train), data.label_names)
    return class_loss_weights(setting, split_labels(train), data.label_names)


def settle_precision(recipe: Recipe, model: nn.Module, data_config: DataConfig, trains: bool) -> PrecisionChoice:
    """training.precision as the run uses it: the recipe's, or for auto the fastest by a timed probe (of a training
    step when the run fine-tunes, of a forward pass when it only probes), the same on every process."""
    asked = recipe.training.precision
    if asked != "auto":
        return PrecisionChoice(asked, "as the recipe sets", {})
    args = recipe.training
    batch = args.per_device_train_batch_size if trains else args.per_device_eval_batch_size

    def measure() -> PrecisionChoice:
        return choose_precision(model, data_config.input_size, trains, recipe.model.channels_last, batch)

    if args.world_size > 1:  # measured by the main process, used by all: every rank must compute alike
        from accelerate.utils import broadcast_object_list

        choice = broadcast_object_list([measure() if args.process_index == 0 else None])[0]
    else:
        choice = measure()
    logger.info("precision: %s, %s%s", choice.precision, choice.reason, " (cached)" if choice.cached else "")
    return choice


def _probe_inputs(
    recipe: Recipe,
    model: nn.Module,
    data: ImageData,
    data_config: DataConfig,
    transforms: tuple[Callable, Callable],
    loss_weights: torch.Tensor | None,
    epoch_end: Callable[[dict[str, float]], None],
    precision: str,
) -> ProbeInputs:
    """What the probe phase reads: the splits, their (training, evaluation) transforms, and the extra signal."""
    return ProbeInputs(
        data.splits["train"],
        data.splits["validation"],
        *transforms,
        recipe.finetune,
        recipe.training.seed,
        recipe.model.channels_last,
        loss_weights,
        train_batchnorm=recipe.finetune.bn != "frozen",
        epoch_end=epoch_end,
        features_key=_shared_features_key(recipe, model, data, data_config, precision),
        signal=ExtraSignal(recipe.signal, data.unlabeled, recipe.augment, data_config),
        precision=precision,
        macro_f1=multi_label_macro_f1 if data.multi_label else macro_f1,
        progress=not recipe.training.disable_tqdm,
    )


def _co_tuning(recipe: Recipe, model: nn.Module, train_split: Dataset, evaluation: Callable) -> CoTuning:
    """Co-Tuning's class relationship, from the training images as the pretrained backbone sees them."""
    source_head, _ = pretrained_head(recipe.model)
    weight, channels_last = recipe.signal.co_tuning_weight, recipe.model.channels_last
    co_tuning = fit_co_tuning(model, source_head, train_split, evaluation, weight, channels_last)
    logger.info(
        "Co-Tuning: %d target classes related to the pretrained head's %d",
        model.config.num_labels,
        source_head.out_features,
    )
    return co_tuning


def _shared_features_key(
    recipe: Recipe, model: nn.Module, data: ImageData, data_config: DataConfig, precision: str
) -> str | None:
    """What the probe's frozen features depend on, for the trials of a search to share them (a stream: nothing)."""
    if not all(isinstance(data.splits[s], Dataset) for s in ("train", "validation")):
        return None
    return features_key(
        model,
        *(data.splits[s]._fingerprint for s in ("train", "validation")),
        data.unlabeled._fingerprint if data.unlabeled is not None else None,
        data_config,
        recipe.augment,
        recipe.model.channels_last,
        recipe.training.seed,
        precision,
    )


def _adapt_batchnorm(model: nn.Module, data: ImageData, evaluation: Callable, recipe: Recipe) -> None:
    train_split = data.splits["train"]
    batch_size, channels_last = recipe.training.per_device_eval_batch_size, recipe.model.channels_last
    adapted = adapt_batchnorm(model, train_split, evaluation, batch_size, channels_last)
    logger.info("bn_adapt: re-estimated %d BatchNorm layers on %d training images", adapted, len(train_split))


def _set_trainable(
    model: PreTrainedModel, recipe: Recipe, frozen: list[str], bn_policy: str
) -> tuple[nn.Module, UnfreezeCallback | None]:
    """Freezes what the recipe freezes (or the unfreezing schedule's first step), or wraps the model in
    a peft adapter: the base weights stay, adapter + head (+ BatchNorm) train."""
    if recipe.peft.peft_method:
        model = apply_adapter(model, recipe.peft, train_batchnorm=recipe.finetune.bn != "frozen")
        trainable, total = parameter_counts(model)
        logger.info(
            "%s: training %s of %s parameters (%.2f%%)",
            recipe.peft.peft_method,
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / total,
        )
        return model, None
    plan = build_plan(model, recipe.finetune, math.ceil(recipe.training.num_train_epochs))
    if plan is None:
        apply_freezing(model, frozen, bn_policy)
        return model, None
    unfreeze = UnfreezeCallback(plan, bn_policy, masked=recipe.training.world_size > 1)
    unfreeze.apply(model, 0)  # before the Trainer wraps the model (DDP must see the final trainable set)
    return model, unfreeze
