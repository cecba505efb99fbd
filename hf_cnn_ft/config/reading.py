"""Reading a recipe: YAML files and command-line overrides, each value read as its section declares it."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hf_cnn_ft.config.keys import KEY_OWNERS, canonical_key, every_key, field_type, init_fields, owner_of
from hf_cnn_ft.config.sections import SECTIONS
from hf_cnn_ft.errors import UserError, first_line, located, shown


class RecipeLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true/false are, so `save_strategy: no` stays the string "no"
    (YAML 1.1 reads no/yes/on/off as booleans). A key given twice in one mapping is an error, not a silent
    last-one-wins; an alias may repeat a value but not a list or mapping, which is how a few lines of YAML
    expand into billions of items."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if isinstance(self.anchors.get(event.anchor), (yaml.SequenceNode, yaml.MappingNode)):
                raise yaml.composer.ComposerError(
                    None, None, f"the alias *{event.anchor} repeats a list or mapping: write it out", event.start_mark
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"'{key}' is given twice (first on line {first_line[key]}): keep one",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# What other tools call our settings: a user coming from timm's train.py or Keras types these first.
OTHER_NAMES = {
    "epochs": "num_train_epochs",
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "wd": "weight_decay",
    "img_size": "image_size",
    "data_dir": "dataset",
    "smoothing": "label_smoothing_factor",
    "workers": "dataloader_num_workers",
}


def _suggest(key: str, candidates: Sequence[str]) -> str:
    if OTHER_NAMES.get(key) in candidates:
        return f"; did you mean {OTHER_NAMES[key]!r}?"
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe(hint: Any) -> str:
    """What a value of type `hint` looks like, for an error message."""
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(hint) or names.get(typing.get_origin(hint)) or "a list"


def coerce_value(value: Any, hint: Any, key: str) -> Any:
    """Converts a YAML or command-line value to the type a dataclass field declares."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        candidates = [member for member in members if member is not type(None)]
        for member in candidates:
            try:
                return coerce_value(value, member, key)
            except UserError:
                continue
        if value is None:
            raise UserError(f"{key}: cannot be null")
        raise UserError(f"{key}: {shown(value)} is not {' or '.join(_describe(member) for member in candidates)}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise UserError(f"{key}: {shown(value)} is not one of {', '.join(map(str, choices))}")
        return value
    if hint is Any:
        return value
    if value is None:
        raise UserError(f"{key}: a value is required (got null)")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise UserError(f"{key}: expected true or false, got {shown(value)}")
    if hint in (int, float):
        return _coerce_number(value, hint, key)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{key}: expected a string, got {shown(value)}")
        return str(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value).value
        except ValueError:
            choices = ", ".join(m.value for m in hint)
            raise UserError(f"{key}: {shown(value)} is not one of {choices}") from None
    if origin in (list, tuple):
        return _coerce_sequence(value, hint, key)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {shown(value)}")
        return dict(value)
    return value


def _coerce_number(value: Any, hint: type, key: str) -> int | float:
    what = "an integer" if hint is int else "a number"
    if isinstance(value, bool):
        raise UserError(f"{key}: expected {what}, got {shown(value)}")
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        number = hint(value) if hint is float or isinstance(value, int) else int(str(value))
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{key}: expected {what}, got {shown(value)}") from None
    if not math.isfinite(number):
        raise UserError(f"{key}: {shown(value)} is not a finite number: give a finite value")
    return number


def _coerce_sequence(value: Any, hint: Any, key: str) -> list | tuple:
    """A list or a fixed-length tuple; a string is split on commas (``--crop_scale 0.3,1``)."""
    origin = typing.get_origin(hint)
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{key}: expected a list, got {shown(value)}")
    args = typing.get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise UserError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(coerce_value(v, a, key) for v, a in zip(value, args))
    item = args[0] if args else Any
    items = [coerce_value(v, item, key) for v in value]
    return tuple(items) if origin is tuple else items


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise UserError(f"recipe file {path} is a folder: give a .yaml file")
    if not path.is_file():
        raise UserError(f"recipe file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UserError(f"recipe file {path} cannot be read ({exc.strerror or first_line(exc)})") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path} line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save the recipe as UTF-8"
        ) from None
    try:
        loaded = yaml.load(text, Loader=RecipeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a recipe must be a mapping of sections ({', '.join(SECTIONS)})")
    return loaded


def _flatten_recipe(raw: dict[str, Any], origin: str) -> dict[str, tuple[str, Any]]:
    """Maps every key to (section, value), accepting both sectioned and flat recipes."""
    flat: dict[str, tuple[str, Any]] = {}
    for top_key, top_value in raw.items():
        if top_key in SECTIONS:
            if top_value is None:
                continue
            if not isinstance(top_value, dict):
                raise UserError(located(origin, f"section '{top_key}' must be a mapping of keys to values"))
            for spelled, value in top_value.items():
                key = _canonical_once(spelled, flat, origin)
                if _section_of(key, top_key) != top_key:
                    hint = _suggest(key, _section_keys(top_key)) or _moved_hint(key)
                    raise UserError(located(origin, f"unknown key '{key}' in section '{top_key}'{hint}"))
                flat[key] = (top_key, value)
        elif owner_of(key := _canonical_once(top_key, flat, origin)) is not None:
            flat[key] = (owner_of(key), top_value)
        else:
            hint = _suggest(top_key, list(SECTIONS) + every_key())
            raise UserError(located(origin, f"unknown key '{top_key}'{hint}"))
    return flat


def _canonical_once(spelled: Any, flat: dict[str, tuple[str, Any]], origin: str) -> Any:
    """A recipe file's key by its own name (`model_name_or_path` is `model`); a key given twice under two
    spellings is an error, not a silent choice."""
    key = canonical_key(spelled) if isinstance(spelled, str) else spelled
    if key != spelled and key in flat:
        raise UserError(located(origin, f"'{spelled}' is another name for '{key}', which is set already: keep one"))
    return key


def _section_of(key: str, section: str) -> str | None:
    # Only the training section is open-ended (any TrainingArguments field): no other needs transformers.
    return owner_of(key) if section == "training" else KEY_OWNERS.get(key)


def _section_keys(section: str) -> list[str]:
    if section == "training":
        return [key for key in every_key() if key not in KEY_OWNERS or KEY_OWNERS[key] == "training"]
    return list(init_fields(SECTIONS[section]))


def _moved_hint(key: str) -> str:
    owner = KEY_OWNERS.get(key)
    return f"; '{key}' belongs in section '{owner}'" if owner else ""


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Parses ``--key value``, ``--key=value``, ``--section.key value`` and bare ``--flag`` (true)."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or token == "--":
            raise UserError(f"unexpected argument {token!r}: overrides look like --learning_rate 3e-4")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        section, dot, name = key.rpartition(".")
        name = canonical_key(name)
        owner = owner_of(name)
        if owner is None:
            raise UserError(f"unknown override --{key}{_suggest(name, every_key())}")
        if dot and section != owner:
            raise UserError(f"unknown override --{key}; '{name}' belongs in section '{owner}'")
        overrides[name] = yaml.load(value, Loader=RecipeLoader) if value != "" else ""
        i += 1
    return overrides


def section_values(values: dict[str, Any], origin: str) -> dict[str, dict[str, Any]]:
    """Flat ``{key: value}`` settings as ``{section: {key: value}}``, each value read as its field declares."""
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in values.items():
        section = owner_of(key)
        if section is None:
            raise UserError(located(origin, f"unknown key '{key}'{_suggest(key, every_key())}"))
        per_section[section][key] = coerce_value(value, field_type(section, key), located(origin, f"{section}.{key}"))
    return per_section


def read_recipe_file(path: Path) -> dict[str, Any]:
    """A recipe file's settings as flat ``{key: value}``, sectioned or flat in the file."""
    return {key: value for key, (_, value) in _flatten_recipe(_read_yaml(path), str(path)).items()}


def recipe_help() -> str:
    """One line per declared recipe key, for `train --help`."""
    lines = []
    for section, cls in SECTIONS.items():
        if section == "training":
            lines.append("training: any transformers TrainingArguments field; these with fine-tuning defaults:")
        else:
            lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            lines.append(f"  {f.name}: {f.metadata.get('help', '')}")
    return "\n".join(lines)
