"""The strategy registry: each fine-tuning strategy is one object, found by the name a recipe gives.

A strategy couples its preset (`StrategyPreset`: the phases it runs and the recipe keys it fills,
checked when the recipe loads) with its behaviour: the probe phase, a hook on the model before the
Trainer starts, extra Trainer callbacks, and the sentence the model card says about it. Training,
the card and the adapter checks ask the strategy; none of them branches on its name. A new strategy
is a subclass registered with `register_strategy`; every key it does not override keeps the
recipe's meaning (freeze, unfreeze, bn, per-stage rates...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import TrainerCallback

from hf_cnn_ft.config.choices import STRATEGY_PRESETS, StrategyPreset
from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.config.sections import FinetuneArguments
from hf_cnn_ft.strategies.extra_signal import probe_with_signal
from hf_cnn_ft.strategies.probe import ProbeInputs, linear_probe
from hf_cnn_ft.strategies.stage_probe import probe_last_stages


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy. Subclass it to change a phase; the defaults follow the preset."""

    preset: StrategyPreset
    summary: str  # what it does, for the model card: "a linear probe, then fine-tuning"
    space: dict[str, dict[str, Any]] = field(default_factory=dict)  # see search_space

    def search_space(self, recipe: Recipe) -> dict[str, dict[str, Any]]:
        """What `hf-cnn-ft tune` searches when the recipe gives no space (config.search's format). A stage
        probe's epoch costs what a Trainer epoch does: a recipe that probes stages searches few epochs."""
        if recipe.finetune.probe_stages and "head_epochs" in self.space:
            return {**self.space, **_STAGE_PROBE_SPACE}
        return dict(self.space)

    @property
    def name(self) -> str:
        return self.preset.name

    def probe(self, model: nn.Module, inputs: ProbeInputs) -> list[dict[str, float]]:
        """Fits the new head (and, with probe_stages, the last stages) on cached inputs; returns the
        per-epoch history. Runs only when the preset probes and the run is not resumed."""
        if inputs.finetune.probe_stages:
            return probe_last_stages(model, inputs)
        if inputs.signal is not None and inputs.signal.active:
            return probe_with_signal(model, inputs)
        return linear_probe(model, inputs)

    def prepare(self, model: nn.Module, recipe: Recipe) -> None:
        """Changes the model just before the Trainer phase (after the probe and the freezing)."""

    def callbacks(self, recipe: Recipe) -> list[TrainerCallback]:
        """Trainer callbacks of its own, added to the run's."""
        return []

    def card_text(self, recipe: Recipe, epochs_trained: float) -> str:
        """One sentence for the model card: the phases as they ran."""
        finetune = recipe.finetune
        phases = [_probe_text(finetune)] if self.preset.probes else []
        if self.preset.trains:
            phases.append(f"{epochs_trained:g} epochs of fine-tuning with the Trainer")
        else:
            kept = "the earlier stages kept their" if finetune.probe_stages else "the backbone kept its"
            phases.append(f"{kept} pretrained weights")
        separator = ", then " if self.preset.trains else "; "
        text = f"Strategy `{self.name}` ({self.summary}): " + separator.join(phases)
        if finetune.unfreeze != "none":
            text += f", unfreezing stages from the top ({finetune.unfreeze}, every {finetune.unfreeze_epochs} epoch(s))"
        if finetune.lr_decay != 1:
            text += f" with layer-wise learning-rate decay {finetune.lr_decay:g}"
        return text + "."


def _probe_text(finetune: FinetuneArguments) -> str:
    if finetune.probe_stages:
        return (
            f"a probe of the new head and the last {finetune.probe_stages} stages ({finetune.head_epochs} epochs "
            "on cached outputs of the frozen stages before them)"
        )
    return f"a linear probe ({finetune.head_epochs} epochs of the new head on cached backbone features)"


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Makes `strategy` available to recipes as `finetune.strategy: NAME` (replacing one of that name)."""
    STRATEGY_PRESETS[strategy.name] = strategy.preset
    STRATEGIES[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """The registered strategy of that name (the recipe checks made sure there is one)."""
    return STRATEGIES[name]


# The default search spaces: the settings the shipped recipes were tuned on by hand (benchmarks/RESULTS.md),
# over ranges wide enough for photos, scans and tiny images alike.
_PROBE_SPACE = {
    "head_learning_rate": {"log_uniform": [1.0e-3, 3.0e-2]},
    "head_epochs": {"int": [10, 100]},
    "head_weight_decay": {"log_uniform": [1.0e-5, 1.0e-1]},
    "feature_views": {"int": [1, 4]},
    "class_weights": {"choice": [None, "auto"]},
    "crop_mode": {"choice": ["center", "squash"]},
}
_STAGE_PROBE_SPACE = {"head_epochs": {"int": [2, 8]}, "probe_stages": {"int": [1, 3]}}
_FINE_TUNING_SPACE = {
    "learning_rate": {"log_uniform": [1.0e-4, 3.0e-3]},
    "weight_decay": {"log_uniform": [1.0e-5, 1.0e-1]},
    "num_train_epochs": {"int": [3, 15]},
    "crop_scale": {"choice": [[0.08, 1.0], [0.35, 1.0], [0.7, 1.0]]},
    "mixup_alpha": {"uniform": [0.0, 0.4]},
    "label_smoothing_factor": {"uniform": [0.0, 0.2]},
    "class_weights": {"choice": [None, "auto"]},
}
_AFTER_PROBE_SPACE = {
    **_FINE_TUNING_SPACE,
    "head_learning_rate": {"log_uniform": [1.0e-3, 3.0e-2]},
    "head_epochs": {"int": [5, 50]},
    "backbone_lr_multiplier": {"log_uniform": [0.03, 1.0]},
    "lr_decay": {"uniform": [0.5, 1.0]},
    "wise_alpha": {"uniform": [0.0, 1.0]},
}
for _name, _summary, _space in (
    ("full", "everything trains from the start", {**_FINE_TUNING_SPACE, "lr_decay": {"uniform": [0.5, 1.0]}}),
    ("linear_probe", "only the new head trains (Kumar et al. 2022)", _PROBE_SPACE),
    ("two_phase", "linear probe, then fine-tuning, LP-FT (Kumar et al. 2022)", _AFTER_PROBE_SPACE),
    (
        "gradual",
        "linear probe, then gradual unfreezing, ULMFiT (Howard & Ruder 2018)",
        {**_AFTER_PROBE_SPACE, "unfreeze_epochs": {"int": [1, 3]}},
    ),
):
    register_strategy(Strategy(STRATEGY_PRESETS[_name], _summary, _space))
