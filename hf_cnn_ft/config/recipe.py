"""The recipe: one object that describes a whole fine-tuning run, built from YAML, overrides or a dict.

A `Recipe` is always complete and checked: every way of making one goes through `build_recipe`, which
reads each value as its section declares it, runs every check (`config.checks`) and fills the
strategy's defaults. Nothing downstream changes it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_cnn_ft.config.checks import RecipeValues, check_recipe, resolve_streaming_schedule
from hf_cnn_ft.config.reading import parse_overrides, read_recipe_file, section_values
from hf_cnn_ft.config.sections import (
    SECTIONS,
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
from hf_cnn_ft.config.training_defaults import TrainingDefaults
from hf_cnn_ft.config.writing import INVOCATION_KEYS, recipe_to_dict, recipe_to_yaml
from hf_cnn_ft.errors import UserError, first_line, located

if TYPE_CHECKING:  # built in build_recipe, after the checks: importing it takes seconds
    from hf_cnn_ft.config.training_arguments import TrainArguments


@dataclass
class Recipe:
    """A whole fine-tuning run, one dataclass per section (see `config.sections` for every key)."""

    data: DataArguments
    model: ModelArguments
    augment: AugmentArguments
    finetune: FinetuneArguments
    signal: SignalArguments
    peft: PeftArguments
    hub: HubArguments
    report: ReportArguments
    tune: TuneArguments
    training: TrainArguments

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None = None, **overrides: Any) -> Recipe:
        """Reads a recipe file and applies keyword overrides: ``Recipe.from_yaml(path, learning_rate=3e-4)``."""
        return load_recipe(path, values=overrides)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """Builds a recipe from flat ``{key: value}`` settings; unset keys keep their defaults."""
        return build_recipe(values)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The recipe as plain data, by section (what `recipe.yaml` holds)."""
        return recipe_to_dict(self)

    def to_yaml(self) -> str:
        return recipe_to_yaml(self)

    def replace(self, **values: Any) -> Recipe:
        """A new recipe with flat ``{key: value}`` changes, built and checked like every other:
        ``recipe.replace(model="resnet50", seed=1)``."""
        settings = {key: value for section in self.to_dict().values() for key, value in section.items()}
        settings |= {key: getattr(self.training, key) for key in INVOCATION_KEYS}  # not saved, but kept here
        return build_recipe({**settings, **values})


def _declared_training_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(TrainingDefaults) if f.default is not dataclasses.MISSING}


def build_recipe(values: dict[str, Any], origin: str = "") -> Recipe:
    """Builds the recipe dataclasses from flat ``{key: value}`` settings, checks every value and fills the
    strategy's defaults: the result is final. transformers is imported only once every check has passed."""
    per_section = section_values(values, origin)
    training = per_section.pop("training")
    try:
        sections = {s: SECTIONS[s](**kwargs) for s, kwargs in per_section.items()}
        check_recipe(RecipeValues(**sections, training={**_declared_training_defaults(), **training}))
        resolve_streaming_schedule(sections["data"], training)
        from hf_cnn_ft.config.training_arguments import TrainArguments

        return Recipe(**sections, training=TrainArguments(**training))
    except UserError as exc:
        raise UserError(located(origin, str(exc))) from None
    except (ValueError, TypeError) as exc:  # transformers' own checks of its arguments
        raise UserError(located(origin, first_line(exc))) from None


def load_recipe(
    path: str | os.PathLike | None, overrides: Sequence[str] = (), values: dict[str, Any] | None = None
) -> Recipe:
    """Reads a recipe file (if any), applies command-line `overrides` (``--key value``) and then `values`
    (``{key: value}``, typed or as strings), and checks the result."""
    settings: dict[str, Any] = {}
    origin = ""  # command-line values: the error names the key
    if path is not None:
        origin = str(path)
        settings = read_recipe_file(Path(path))
    settings.update(parse_overrides(overrides))
    settings.update(values or {})
    return build_recipe(settings, origin)
