"""The strategy registry: each fine-tuning strategy is one object, found by the name a recipe gives.

A strategy couples its preset (`StrategyPreset`: the phases it runs and the recipe keys it fills,
checked when the recipe loads) with its behaviour: the probe phase, a hook on the model before the
Trainer starts, extra Trainer callbacks, and the sentence the model card says about it. Training,
the card and the adapter checks ask the strategy; none of them branches on its name. A new strategy
is a subclass registered with `register_strategy`; every key it does not override keeps the
recipe's meaning (freeze, unfreeze, bn, per-stage rates...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import TrainerCallback

from hf_cnn_ft.config.choices import STRATEGY_PRESETS, StrategyPreset
from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.config.sections import FinetuneArguments
from hf_cnn_ft.strategies.probe import ProbeInputs, linear_probe
from hf_cnn_ft.strategies.stage_probe import probe_last_stages


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy. Subclass it to change a phase; the defaults follow the preset."""

    preset: StrategyPreset
    summary: str  # what it does, for the model card: "a linear probe, then fine-tuning"

    @property
    def name(self) -> str:
        return self.preset.name

    def probe(self, model: nn.Module, inputs: ProbeInputs) -> list[dict[str, float]]:
        """Fits the new head (and, with probe_stages, the last stages) on cached inputs; returns the
        per-epoch history. Runs only when the preset probes and the run is not resumed."""
        if inputs.finetune.probe_stages:
            return probe_last_stages(model, inputs)
        return linear_probe(model, inputs)

    def prepare(self, model: nn.Module, recipe: Recipe) -> None:
        """Changes the model just before the Trainer phase (after the probe and the freezing)."""

    def callbacks(self, recipe: Recipe) -> list[TrainerCallback]:
        """Trainer callbacks of its own, added to the run's."""
        return []

    def card_text(self, recipe: Recipe, summary: dict[str, Any]) -> str:
        """One sentence for the model card: the phases as they ran."""
        finetune = recipe.finetune
        phases = [_probe_text(finetune)] if self.preset.probes else []
        if self.preset.trains:
            phases.append(f"{summary['epochs_trained']:g} epochs of fine-tuning with the Trainer")
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


for _name, _summary in (
    ("full", "everything trains from the start"),
    ("linear_probe", "only the new head trains (Kumar et al. 2022)"),
    ("two_phase", "linear probe, then fine-tuning, LP-FT (Kumar et al. 2022)"),
    ("gradual", "linear probe, then gradual unfreezing, ULMFiT (Howard & Ruder 2018)"),
):
    register_strategy(Strategy(STRATEGY_PRESETS[_name], _summary))
