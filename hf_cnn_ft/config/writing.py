"""Writing a recipe back out: the resolved settings as plain data and as a recipe file."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import yaml

from hf_cnn_ft.config.keys import init_fields
from hf_cnn_ft.config.sections import SECTIONS

if TYPE_CHECKING:  # annotations only: the Recipe is built in config.recipe
    from hf_cnn_ft.config.recipe import Recipe

# Settings of one invocation, never saved with a recipe (a saved recipe must not resume or overwrite).
INVOCATION_KEYS = ("resume_from_checkpoint", "overwrite_output_dir", "local_rank")


def plain_value(value: Any) -> Any:
    """A setting as the recipe spells it: enums as their value (`cosine`), tuples as lists, all the way down."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [plain_value(v) for v in value]
    if isinstance(value, list):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    return value


def _training_values(recipe: Recipe) -> dict[str, Any]:
    """Every training setting as resolved, this project's keys first; no tokens, nothing per-invocation."""
    resolved = recipe.training.to_dict()
    ours = [key for key in init_fields(SECTIONS["training"]) if key in resolved]
    ordered = ours + sorted(key for key in resolved if key not in ours)
    return {key: plain_value(resolved[key]) for key in ordered if key not in INVOCATION_KEYS and "token" not in key}


def recipe_to_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The resolved recipe as plain data: every key of every section, as the run used it."""
    result: dict[str, dict[str, Any]] = {}
    for section in (name for name in SECTIONS if name != "training"):
        obj = getattr(recipe, section)
        result[section] = {f: plain_value(getattr(obj, f)) for f in init_fields(type(obj))}
    result["training"] = _training_values(recipe)
    return result


class _RecipeDumper(yaml.SafeDumper):
    """Block style for sections, flow style for short lists such as crop_scale: [0.25, 1.0]."""


_RecipeDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def sections_to_yaml(sections: dict[str, dict[str, Any]]) -> str:
    """Recipe data by section as a recipe file: a block per section, short lists inline."""
    return yaml.dump(plain_value(sections), Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False)


def recipe_to_yaml(recipe: Recipe) -> str:
    return sections_to_yaml(recipe_to_dict(recipe))
