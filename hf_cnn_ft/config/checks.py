"""Every check of a recipe's values, and the defaults its strategy fills in: run once, when it loads.

Choice-valued keys are checked by their `Literal` types as the values are read; what is left here
are ranges, the paths a recipe names and the constraints between keys. Each failure is one line naming
the key, the value and what to use instead. The checks read `RecipeValues`, the recipe before its
training section becomes a transformers `TrainingArguments` (whose import takes seconds), so a bad value
fails at once. After `check_recipe` nothing downstream validates or changes the recipe. (A few checks need
the data or the model itself, such as `freeze: 7` on a backbone of five stages; those stay where the model
is built.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_cnn_ft.config.checkpoints import (
    NO_RESUME,
    RESUME_LATEST,
    checkpoint_problem,
    last_complete_checkpoint,
    resume_dir,
)
from hf_cnn_ft.config.choices import METRIC_NAMES, MULTI_LABEL_METRIC_NAMES, STRATEGY_PRESETS, StrategyPreset
from hf_cnn_ft.config.keys import owner_of
from hf_cnn_ft.config.multi_label import check_multi_label
from hf_cnn_ft.config.paths import check_safe_weights, looks_like_local_path
from hf_cnn_ft.config.ranges import RANGES
from hf_cnn_ft.config.search import check_tune
from hf_cnn_ft.config.sections import (
    AugmentArguments,
    DataArguments,
    FinetuneArguments,
    HubArguments,
    ModelArguments,
    PeftArguments,
    ReportArguments,
    SignalArguments,
    TuneArguments,
)
from hf_cnn_ft.config.signal import check_signal, resolve_signal
from hf_cnn_ft.errors import UserError


@dataclass
class RecipeValues:
    """What the checks read: the built sections, and the training values as given over the declared
    defaults (transformers' own defaults are valid by definition)."""

    data: DataArguments
    model: ModelArguments
    augment: AugmentArguments
    finetune: FinetuneArguments
    signal: SignalArguments
    peft: PeftArguments
    hub: HubArguments
    report: ReportArguments
    tune: TuneArguments
    training: Mapping[str, Any]


def strategy_preset(name: str) -> StrategyPreset:
    """The preset of a registered strategy; one line listing the registered ones otherwise."""
    if name not in STRATEGY_PRESETS:
        raise UserError(f"finetune.strategy: {name!r} is not one of {', '.join(STRATEGY_PRESETS)}")
    return STRATEGY_PRESETS[name]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _section_values(values: RecipeValues, section: str) -> Mapping[str, Any]:
    return values.training if section == "training" else vars(getattr(values, section))


def _check_ranges(values: RecipeValues) -> None:
    for section, bounds in RANGES.items():
        given = _section_values(values, section)
        for key, interval in bounds.items():
            value = given.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # unset, or not a number: its type was checked when it was read
            if key == "num_train_epochs" and (given.get("max_steps") or -1) > 0:
                continue  # max_steps overrides the epochs
            _require(value in interval, f"{section}.{key}: {value} is out of range: use a value {interval}")


def _check_paths(values: RecipeValues) -> None:
    """What the recipe names on this machine must be there; a Hub id is checked when it is fetched."""
    dataset = values.data.dataset
    if dataset and looks_like_local_path(dataset):
        _require(
            Path(dataset).expanduser().exists(),
            f"data path {dataset} does not exist: check data.dataset (a folder, CSV/JSONL file or Hub id)",
        )
    model = values.model.model
    if model and looks_like_local_path(model):
        _require(
            Path(model).expanduser().is_dir(),
            f"model.model: {model} is not a model directory: give a model folder, timm name or Hub id (offline "
            "weights: fetch them with `hf-cnn-ft import-weights --known NAME`)",
        )
    if model and Path(model).expanduser().is_dir():
        check_safe_weights(Path(model).expanduser(), "model.model:")
    weights = values.model.weights
    if weights is not None:
        _require(
            Path(weights).expanduser().is_file(),
            f"model.weights: {weights} is not a file: give a .safetensors or PyTorch weights file",
        )
    output_dir = Path(str(values.training.get("output_dir"))).expanduser()
    _require(
        not output_dir.exists() or output_dir.is_dir(),
        f"training.output_dir: {output_dir} is a file: choose a folder for the run's outputs",
    )


def _check_resume(training: Mapping[str, Any]) -> None:
    """--resume continues a run: it needs a checkpoint, or a typo in output_dir would start afresh."""
    value = training.get("resume_from_checkpoint")
    if value is None or str(value).lower() in NO_RESUME:
        return
    folder = resume_dir(Path(str(training.get("output_dir"))).expanduser(), bool(training.get("overwrite_output_dir")))
    if str(value).lower() in RESUME_LATEST:
        _require(
            last_complete_checkpoint(folder) is not None,
            f"--resume: no complete checkpoint in {folder} to resume from: check training.output_dir, "
            "or drop --resume to start a new run",
        )
        return
    checkpoint = Path(str(value)).expanduser()
    _require(
        checkpoint.is_dir(),
        f"training.resume_from_checkpoint: checkpoint {value} does not exist: give a checkpoint folder, "
        "or --resume for the latest one in output_dir",
    )
    problem = checkpoint_problem(checkpoint)
    _require(
        problem is None,
        f"training.resume_from_checkpoint: {value} cannot be resumed from ({problem}): give another checkpoint, "
        "or --resume for the latest complete one in output_dir",
    )


def _check_folds(values: RecipeValues) -> None:
    data = values.data
    _require(
        data.folds is None or data.fold < data.folds,
        f"data.fold: {data.fold} is not a fold of data.folds {data.folds}: use 0 to {(data.folds or 1) - 1}",
    )


def _check_augment(values: RecipeValues) -> None:
    low, high = values.augment.crop_scale
    _require(
        0 < low <= high <= 1,
        f"augment.crop_scale: {list(values.augment.crop_scale)} must satisfy 0 < low <= high <= 1",
    )


def _check_freeze(value: object) -> None:
    _require(
        settled_freeze(value) in ("none", "backbone") or settled_freeze(value).isdigit(),
        f"finetune.freeze: {value!r} is not none, backbone or a number of stages",
    )


def _check_milestones(finetune: FinetuneArguments) -> None:
    if finetune.unfreeze != "milestones":
        return
    _require(
        bool(finetune.unfreeze_milestones),
        "finetune.unfreeze: milestones needs finetune.unfreeze_milestones, e.g. {3: 2, 6: none}",
    )
    for epoch, value in finetune.unfreeze_milestones.items():
        _require(str(epoch).isdigit(), f"finetune.unfreeze_milestones: {epoch!r} is not an epoch number")
        _check_freeze(settled_freeze(value))


def _check_class_weights(setting: object) -> None:
    _require(
        setting in (None, "auto", "none") or isinstance(setting, dict),
        f"finetune.class_weights: {setting!r} is not auto, none or a mapping of class to weight",
    )


def _check_finetune(values: RecipeValues) -> None:
    finetune = values.finetune
    preset = strategy_preset(finetune.strategy)
    _check_freeze(finetune.freeze)
    _check_milestones(finetune)
    _check_class_weights(finetune.class_weights)
    _require(
        not preset.probes or finetune.head_epochs >= 1,
        f"finetune.head_epochs: {finetune.head_epochs} is not >= 1, which strategy {finetune.strategy} needs",
    )
    _check_wise(finetune, preset)


def _check_wise(finetune: FinetuneArguments, preset: StrategyPreset) -> None:
    alpha = finetune.wise_alpha
    if alpha is None:
        return
    _require(
        preset.probes and preset.trains,
        f"finetune.wise_alpha interpolates from the linear-probed start, which strategy {finetune.strategy} "
        "does not have: use two_phase or gradual",
    )
    _require(alpha == "auto" or 0 <= alpha <= 1, f"finetune.wise_alpha: {alpha} is not auto or in [0, 1]")


def _check_peft(values: RecipeValues) -> None:
    """The settings an adapter run cannot honour."""
    peft, finetune = values.peft, values.finetune
    if not peft.peft_method:
        return
    adapting = [name for name, preset in STRATEGY_PRESETS.items() if preset.adapters]
    _require(
        values.model.pretrained or values.model.weights is not None,
        "peft adapts pretrained weights: with model.pretrained false use strategy full instead",
    )
    _require(
        STRATEGY_PRESETS[finetune.strategy].adapters,
        f"finetune.strategy: {finetune.strategy!r} does not combine with peft; use one of {', '.join(adapting)}",
    )
    _require(
        finetune.unfreeze in (None, "none"),
        "finetune.unfreeze does not combine with peft: the adapter keeps every base weight frozen",
    )
    _require(
        finetune.freeze in ("none", "0", ""),
        "finetune.freeze does not combine with peft: the adapter already keeps the base weights",
    )
    _require(
        not finetune.l2sp_alpha and finetune.backbone_lr_multiplier == 1 and finetune.lr_decay in (None, 1),
        "l2sp_alpha, backbone_lr_multiplier and lr_decay apply to full weights, not to a peft adapter",
    )
    _require(
        finetune.wise_alpha is None,
        "finetune.wise_alpha does not combine with peft: it interpolates full weights, not an adapter",
    )


def _check_training(values: RecipeValues) -> None:
    training = values.training
    metric = training.get("metric_for_best_model")
    if metric is not None:
        name = metric.removeprefix("eval_")
        _require(
            name in (*METRIC_NAMES, *MULTI_LABEL_METRIC_NAMES, "loss"),
            f"training.metric_for_best_model: {metric!r} is not one of loss, {', '.join(METRIC_NAMES)} (multi-label: "
            f"{', '.join(MULTI_LABEL_METRIC_NAMES)})",
        )
        _require(
            name not in MULTI_LABEL_METRIC_NAMES or values.data.multi_label or values.data.label_separator,
            f"training.metric_for_best_model: {metric!r} is a multi-label metric: set data.multi_label: true (or "
            "data.label_separator), or choose one of " + ", ".join(METRIC_NAMES),
        )
    _require(
        not (training.get("push_to_hub") or training.get("hub_model_id")),
        "set hub.repo_id instead of training.push_to_hub / hub_model_id: the hub section pushes the model "
        "card and a layout that both transformers and timm load",
    )
    _require(
        not training.get("hub_token"),
        "training.hub_token: a token never goes in a recipe or on the command line (the Trainer would save it "
        "in every checkpoint): remove it and export HF_TOKEN or run `hf auth login`",
    )
    _require(
        not training.get("remove_unused_columns"),
        "training.remove_unused_columns must stay false: the transforms need the raw image column "
        "(transformers #17894)",
    )
    _check_resume(training)


def settled_freeze(value: object) -> str:
    """A checked freeze value spelled one way: `none`, `backbone` or a number of stages ("0" is none)."""
    text = str(value).strip().lower() if value is not None else "none"
    return "none" if text in ("", "0") else text


def resolve_strategy_defaults(values: RecipeValues) -> None:
    """Settles the finetune section once, for everything downstream: the keys the strategy presets and the
    recipe left unset, `freeze` and the milestones spelled one way, and `bn: auto` decided (frozen for
    pretrained weights, train for a random start or under a peft adapter, which trains BatchNorm with it)."""
    finetune = values.finetune
    preset = STRATEGY_PRESETS[finetune.strategy]
    if finetune.unfreeze is None:
        finetune.unfreeze = preset.unfreeze
    if finetune.lr_decay is None:
        finetune.lr_decay = preset.lr_decay
    finetune.freeze = settled_freeze(finetune.freeze)
    if finetune.unfreeze_milestones:
        finetune.unfreeze_milestones = {int(e): settled_freeze(v) for e, v in finetune.unfreeze_milestones.items()}
    if finetune.bn == "auto":
        pretrained = values.model.pretrained or values.model.weights is not None
        finetune.bn = "frozen" if pretrained and not values.peft.peft_method else "train"


def _check_signal(values: RecipeValues) -> None:
    adapters = bool(values.peft.peft_method)
    preset = strategy_preset(values.finetune.strategy)
    check_signal(values.signal, values.data, preset, adapters, values.finetune.probe_stages)
    if values.signal.co_tuning_weight and values.model.global_pool == "catavgmax":
        raise UserError(
            "signal.co_tuning_weight: the pretrained head reads the backbone's pooled features once, and "
            "model.global_pool: catavgmax gives them twice: use avg, max or avgmax, or set co_tuning_weight: 0"
        )


def _check_multi_label(values: RecipeValues) -> None:
    check_multi_label(values.data, values.signal, values.training.get("metric_for_best_model"))


def _check_tune(values: RecipeValues) -> None:
    check_tune(values.tune, lambda key: owner_of(key) is not None)


def _check_streaming(values: RecipeValues) -> None:
    """What a stream cannot do: be counted in epochs, cached as features, or drawn from by class."""
    if not values.data.streaming:
        return
    _require(
        (values.training.get("max_steps") or -1) > 0,
        "data.streaming: a stream has no length, so the run is counted in steps: set training.max_steps (e.g. "
        "training images x epochs / (per_device_train_batch_size x processes))",
    )
    strategy = values.finetune.strategy
    _require(
        not strategy_preset(strategy).probes,
        f"data.streaming: strategy {strategy} fits the head on cached features of the whole training split; "
        "with a stream use strategy full (finetune.freeze: backbone for a frozen backbone)",
    )
    _require(
        not values.finetune.bn_adapt,
        "data.streaming: finetune.bn_adapt reads the whole training split before training, which a stream is not "
        "read for; remove bn_adapt (or stream without it)",
    )
    _require(
        values.finetune.sampler != "balanced",
        "data.streaming: the balanced sampler draws images by index, which a stream has not; use "
        "finetune.class_weights: auto instead",
    )


def resolve_streaming_schedule(data: DataArguments, training: dict[str, Any]) -> None:
    """A stream has no epochs: evaluation, checkpoints and logs left at "epoch" come every tenth of max_steps
    (checkpoints with the evaluations, which choose the best of them)."""
    if not data.streaming:
        return
    every = max(1, int(training["max_steps"]) // 10)
    checkpoints = training.get("eval_steps") or training.get("save_steps") or every  # the best model is a checkpoint
    for kind, steps in (("eval", checkpoints), ("save", checkpoints), ("logging", every)):
        if str(training.get(f"{kind}_strategy", "epoch")) == "epoch":
            training[f"{kind}_strategy"] = "steps"
            training.setdefault(f"{kind}_steps", steps)


CHECKS = (
    _check_ranges,
    _check_augment,
    _check_folds,
    _check_finetune,
    _check_peft,
    _check_training,
    _check_tune,
    _check_streaming,
    _check_signal,
    _check_multi_label,
    _check_paths,
)


def check_recipe(values: RecipeValues) -> RecipeValues:
    """Runs every check, then resolves the strategy's defaults."""
    for check in CHECKS:
        check(values)
    resolve_strategy_defaults(values)
    resolve_signal(values.signal, values.data)
    return values
