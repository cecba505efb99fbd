"""Which section of the recipe owns a key, and the key's declared type: what lets an override name a key
plainly (`--learning_rate`) and a recipe file put it under its section."""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from hf_cnn_ft.config.sections import SECTIONS


def init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _key_owners() -> dict[str, str]:
    owners: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for name in init_fields(cls):
            if name in owners:
                raise AssertionError(f"recipe key {name!r} is defined in both {owners[name]} and {section}")
            owners[name] = section
    return owners


KEY_OWNERS = _key_owners()

# transformers' image-classification example spells these keys its own way; users bring its commands along.
ALIASES = {
    "model_name_or_path": "model",
    "dataset_name": "dataset",
    "dataset_config_name": "dataset_config",
    "image_column_name": "image_column",
    "label_column_name": "label_column",
}


def canonical_key(key: str) -> str:
    """The recipe's own name for `key`: dashes read as underscores, transformers' example spellings mapped."""
    key = key.replace("-", "_")
    return ALIASES.get(key, key)


def _training_fields() -> dict[str, Any]:
    from hf_cnn_ft.config.training_arguments import training_fields  # imports transformers: seconds

    return training_fields()


def owner_of(key: str) -> str | None:
    """The section a key belongs to, None for an unknown key. A training key this project does not
    declare is looked up among transformers' TrainingArguments fields, which imports transformers:
    only a recipe that names such a key pays for it before its checks."""
    if key in KEY_OWNERS:
        return KEY_OWNERS[key]
    return "training" if key in _training_fields() else None


@functools.cache
def _section_hints(section: str) -> dict[str, Any]:
    return typing.get_type_hints(SECTIONS[section])


def field_type(section: str, key: str) -> Any:
    """The declared type of `section.key` (the key must belong to the section)."""
    hints = _section_hints(section)
    return hints[key] if key in hints else _training_fields()[key]


def every_key() -> list[str]:
    """All recipe keys, transformers' TrainingArguments fields included (for suggestions)."""
    return [*KEY_OWNERS, *(key for key in _training_fields() if key not in KEY_OWNERS)]
