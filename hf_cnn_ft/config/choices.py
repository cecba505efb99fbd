"""The allowed values of the recipe's choice-valued keys, and the registered strategies' presets.

A value outside them fails when the recipe loads. `STRATEGY_PRESETS` grows when a strategy is
registered (`hf_cnn_ft.strategies.registry.register_strategy`).
"""

from __future__ import annotations

from dataclasses import dataclass

BN_POLICIES = ("auto", "train", "frozen", "frozen_in_frozen_stages")
UNFREEZE_SCHEDULES = ("none", "head_then_all", "one_per_epochs", "milestones")
SAMPLERS = ("random", "balanced")
AUTO_AUGMENT_POLICIES = ("randaugment", "trivialaugment")
CROP_MODES = ("center", "squash")
GLOBAL_POOLS = ("avg", "max", "avgmax", "catavgmax")  # timm's pooling of the last feature map
CROSS_SPLIT_DUPLICATES = ("remove", "keep")
TEST_TIME_FLIPS = ("none", "horizontal", "vertical", "both")
PEFT_METHODS = ("lora", "loha")
PUSH_STRATEGIES = ("end", "every_save", "best")
REJECTION_SCORES = ("mahalanobis", "energy", "msp", "auto")  # evaluation/rejection.py; auto: msp or energy
UNLABELED_METHODS = ("auto", "fixmatch", "flexmatch", "pseudo_label", "none")
# What evaluation computes, by name: the choices of training.metric_for_best_model (and loss).
METRIC_NAMES = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "top5_accuracy",
)

# ...and those a multi-label run adds (data.multi_label or data.label_separator in the recipe): mean average
# precision and micro-F1; `accuracy` there counts an image right when every one of its labels is.
MULTI_LABEL_METRIC_NAMES = ("map", "f1_micro")


@dataclass(frozen=True)
class StrategyPreset:
    """What a fine-tuning strategy presets: the recipe keys it fills when they are unset, and its phases.

    The behaviour lives in `hf_cnn_ft.strategies`; this is the part a recipe is checked against at load.
    """

    name: str
    probes: bool  # fits the new head on cached features before anything else
    trains: bool = True  # runs the Trainer phase after that
    unfreeze: str = "none"  # finetune.unfreeze when unset
    lr_decay: float = 1.0  # finetune.lr_decay when unset
    adapters: bool = False  # combines with a peft adapter


STRATEGY_PRESETS: dict[str, StrategyPreset] = {
    preset.name: preset
    for preset in (
        StrategyPreset("full", probes=False, adapters=True),
        StrategyPreset("linear_probe", probes=True, trains=False),
        StrategyPreset("two_phase", probes=True, adapters=True),
        StrategyPreset("gradual", probes=True, unfreeze="one_per_epochs", lr_decay=0.7),
    )
}
