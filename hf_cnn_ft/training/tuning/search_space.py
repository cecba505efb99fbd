"""The search space of a tune run, and the recipe each trial trains.

The space is the recipe's `tune.space`, or the default space of its strategy. Before the first trial every
bound and every choice is built into a recipe, one key at a time, so a value a key does not accept is one
line before any training. A trial's recipe is the file's own settings (not the resolved recipe: a trial
that switches strategy gets that strategy's defaults) with the sampled values and what every trial sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml

from hf_cnn_ft.config.keys import owner_of
from hf_cnn_ft.config.reading import section_values
from hf_cnn_ft.config.recipe import Recipe, build_recipe
from hf_cnn_ft.config.search import Distribution, TuneArguments, check_search_space
from hf_cnn_ft.config.writing import sections_to_yaml
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.strategies.registry import get_strategy

# What every trial sets: judged on validation alone, no report, no Hub push, quiet.
TRIAL_SETTINGS = {"read_test_split": False, "report_at_end": False, "repo_id": None, "disable_tqdm": True}
PLAIN = (type(None), bool, int, float, str)  # what Optuna stores as a categorical choice


def search_space(recipe: Recipe) -> dict[str, Distribution]:
    """The recipe's own space, or its strategy's default one."""
    space = recipe.tune.space
    if space is None:
        space = get_strategy(recipe.finetune.strategy).search_space(recipe)
    return check_search_space(space, lambda key: owner_of(key) is not None)


def without_tune_keys(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a trial or the best recipe trains on: the tune section is the search's, not the run's."""
    return {key: value for key, value in settings.items() if key not in TuneArguments.__dataclass_fields__}


def check_space_values(settings: dict[str, Any], space: dict[str, Distribution]) -> None:
    """Builds the recipe with each bound and each choice of every key: one line for the first bad value."""
    base = {**without_tune_keys(settings), **TRIAL_SETTINGS}
    for key, distribution in space.items():
        for value in distribution.values:
            try:
                build_recipe({**base, key: value})
            except UserError as exc:
                raise UserError(f"tune.space.{key}: the value {value!r} fails: {exc}") from None


def _label(value: Any) -> Any:
    """A choice as Optuna stores it: plain values as they are, lists and mappings as their YAML."""
    return value if isinstance(value, PLAIN) else yaml.safe_dump(value, default_flow_style=True).strip()


def suggest(trial: optuna.Trial, space: dict[str, Distribution], only: list[str] | None = None) -> dict[str, Any]:
    """The trial's values, one per key of the space (of the keys in `only`, where given)."""
    values = {}
    for key, distribution in space.items():
        if only is not None and key not in only:
            continue
        low, high = distribution.values[0], distribution.values[-1]
        if distribution.kind == "choice":
            labels = [_label(choice) for choice in distribution.values]
            picked = trial.suggest_categorical(key, labels)
            values[key] = distribution.values[labels.index(picked)]
        elif distribution.kind in ("int", "log_int"):
            values[key] = trial.suggest_int(key, low, high, log=distribution.kind == "log_int")
        else:
            values[key] = trial.suggest_float(key, low, high, log=distribution.kind == "log_uniform")
    return values


def recipe_values(recipe: Recipe, keys: list[str]) -> dict[str, Any]:
    """The resolved recipe's value of each key, as plain data."""
    values = {}
    for key in keys:
        value = getattr(getattr(recipe, owner_of(key)), key, None)
        value = getattr(value, "value", value)  # an enum of TrainingArguments
        values[key] = list(value) if isinstance(value, tuple) else value
    return values


def starting_values(recipe: Recipe, space: dict[str, Distribution]) -> dict[str, Any]:
    """The recipe's own value of each key of the space, as the study stores it, where it lies in the space."""
    fitting = {}
    own = recipe_values(recipe, list(space))
    for key, distribution in space.items():
        value = own[key]
        if distribution.kind == "choice":
            labels = [_label(choice) for choice in distribution.values]
            label = _label(value)
            if label in labels:
                fitting[key] = label
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = distribution.values
            if low <= value <= high and (distribution.kind in ("uniform", "log_uniform") or float(value).is_integer()):
                fitting[key] = int(value) if distribution.kind in ("int", "log_int") else float(value)
    return fitting


def trial_settings(settings: dict[str, Any], values: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """What a trial trains on: the recipe's settings, the trial's values, and what every trial sets."""
    return {**without_tune_keys(settings), **values, **TRIAL_SETTINGS, "output_dir": str(output_dir)}


def sectioned_yaml(settings: dict[str, Any], header: str = "") -> str:
    """Flat settings as a recipe file, each key under its section."""
    per_section = {section: keys for section, keys in section_values(settings, "").items() if keys}
    return header + sections_to_yaml(per_section)
