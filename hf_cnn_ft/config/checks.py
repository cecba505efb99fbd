"""Every check of a recipe's values, and the defaults its strategy fills in: run once, when it loads.

Choice-valued keys are checked by their `Literal` types as the values are read; what is left here
are ranges and the constraints between keys. Each failure is one line naming the key, the value and
what is allowed. After `check_recipe` nothing downstream validates or changes the recipe: by the
time a dataset, image or model is touched, every setting is known to be usable. (A few checks need
the data or the model itself, such as `freeze: 7` on a backbone of five stages; those stay where
the model is built.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_cnn_ft.config.choices import METRIC_NAMES, STRATEGY_PRESETS, StrategyPreset
from hf_cnn_ft.config.sections import FinetuneArguments
from hf_cnn_ft.errors import UserError

if TYPE_CHECKING:  # annotations only: config.recipe runs these checks
    from hf_cnn_ft.config.recipe import Recipe


def strategy_preset(name: str) -> StrategyPreset:
    """The preset of a registered strategy; one line listing the registered ones otherwise."""
    if name not in STRATEGY_PRESETS:
        raise UserError(f"finetune.strategy: {name!r} is not one of {', '.join(STRATEGY_PRESETS)}")
    return STRATEGY_PRESETS[name]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _check_data(recipe: Recipe) -> None:
    for key in ("validation_fraction", "test_fraction"):
        value = getattr(recipe.data, key)
        _require(0.0 <= value < 1.0, f"data.{key}: {value} is not in [0, 1)")


def _check_augment(recipe: Recipe) -> None:
    augment = recipe.augment
    low, high = augment.crop_scale
    _require(
        0 < low <= high <= 1,
        f"augment.crop_scale: {list(augment.crop_scale)} must satisfy 0 < low <= high <= 1",
    )
    _require(0 <= augment.mix_prob <= 1, f"augment.mix_prob: {augment.mix_prob} is not in [0, 1]")


def _check_freeze(value: str) -> None:
    _require(
        value in ("none", "backbone", "") or str(value).isdigit(),
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
        _check_freeze(str(value).lower() if value is not None else "none")


def _check_class_weights(setting: object) -> None:
    _require(
        setting in (None, "auto", "none") or isinstance(setting, dict),
        f"finetune.class_weights: {setting!r} is not auto, none or a mapping of class to weight",
    )


def _check_finetune(recipe: Recipe) -> None:
    finetune = recipe.finetune
    preset = strategy_preset(finetune.strategy)
    _check_freeze(finetune.freeze)
    _check_milestones(finetune)
    _check_class_weights(finetune.class_weights)
    _require(finetune.unfreeze_epochs >= 1, f"finetune.unfreeze_epochs: {finetune.unfreeze_epochs} is not >= 1")
    _require(
        not preset.probes or finetune.head_epochs >= 1,
        f"finetune.head_epochs: {finetune.head_epochs} is not >= 1, which strategy {finetune.strategy} needs",
    )
    _require(finetune.feature_views >= 1, f"finetune.feature_views: {finetune.feature_views} is not >= 1")
    _require(finetune.probe_stages >= 0, f"finetune.probe_stages: {finetune.probe_stages} is not 0 (the head) or more")
    _require(finetune.l2sp_alpha >= 0, f"finetune.l2sp_alpha: {finetune.l2sp_alpha} is not >= 0")
    _require(
        finetune.backbone_lr_multiplier >= 0,
        f"finetune.backbone_lr_multiplier: {finetune.backbone_lr_multiplier} is not >= 0",
    )
    _require(
        finetune.lr_decay is None or 0 < finetune.lr_decay <= 1,
        f"finetune.lr_decay: {finetune.lr_decay} is not in (0, 1]",
    )
    _require(
        finetune.ema_decay is None or 0 < finetune.ema_decay < 1,
        f"finetune.ema_decay: {finetune.ema_decay} is not between 0 and 1 (e.g. 0.999)",
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


def _check_peft(recipe: Recipe) -> None:
    """The settings an adapter run cannot honour."""
    peft, finetune = recipe.peft, recipe.finetune
    _require(peft.lora_rank >= 1, f"peft.lora_rank: {peft.lora_rank} is not >= 1")
    if not peft.peft_method:
        return
    adapting = [name for name, preset in STRATEGY_PRESETS.items() if preset.adapters]
    _require(
        recipe.model.pretrained or recipe.model.weights is not None,
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


def _check_training(recipe: Recipe) -> None:
    args = recipe.training
    metric = args.metric_for_best_model
    if metric is not None:
        _require(
            metric.removeprefix("eval_") in (*METRIC_NAMES, "loss"),
            f"training.metric_for_best_model: {metric!r} is not one of loss, {', '.join(METRIC_NAMES)}",
        )
    _require(
        not (args.push_to_hub or args.hub_model_id),
        "set hub.repo_id instead of training.push_to_hub / hub_model_id: the hub section pushes the model "
        "card and a layout that both transformers and timm load",
    )
    _require(
        not args.remove_unused_columns,
        "training.remove_unused_columns must stay false: the transforms need the raw image column "
        "(transformers #17894)",
    )


def resolve_strategy_defaults(finetune: FinetuneArguments) -> None:
    """Fills the keys the strategy presets and the recipe left unset, so the saved recipe shows them."""
    preset = STRATEGY_PRESETS[finetune.strategy]
    if finetune.unfreeze is None:
        finetune.unfreeze = preset.unfreeze
    if finetune.lr_decay is None:
        finetune.lr_decay = preset.lr_decay


CHECKS = (_check_data, _check_augment, _check_finetune, _check_peft, _check_training)


def check_recipe(recipe: Recipe) -> Recipe:
    """Runs every check, then resolves the strategy's defaults; returns the recipe, complete."""
    for check in CHECKS:
        check(recipe)
    resolve_strategy_defaults(recipe.finetune)
    return recipe
