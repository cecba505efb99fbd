"""The `tune` section: what `hf-cnn-ft tune` searches, for how long, and where the study lives.

A search space maps recipe keys to distributions, written as one-entry mappings:

    tune:
      space:
        learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}
        label_smoothing_factor: {uniform: [0.0, 0.2]}
        num_train_epochs: {int: [3, 15]}
        head_batch_size: {log_int: [16, 256]}
        model: {choice: [data/weights/mobilenet_v2/model, data/weights/efficientnet_lite0/model]}

Without a space, the recipe's strategy brings its own (`Strategy.search_space`). The shape of the space is
checked here, when the recipe loads; whether each value is one the key accepts is checked by `tune` before
the first trial, by building the recipe with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hf_cnn_ft.errors import UserError

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "log_int", "choice")
PRUNERS = ("median", "halving", "none")
# Keys a trial sets itself: searching them would change where or whether it runs, not how well it learns.
UNSEARCHABLE = ("output_dir", "dataset", "read_test_split", "resume_from_checkpoint", "repo_id")


@dataclass
class TuneArguments:
    """`hf-cnn-ft tune`: the search over recipe keys (read only by the tune command)."""

    space: dict[str, dict[str, Any]] | None = field(
        default=None,
        metadata={
            "help": "Recipe key -> {log_uniform|uniform|int|log_int: [low, high]} or {choice: [values]}; "
            "null: the default space of the recipe's strategy."
        },
    )
    trials: int | None = field(
        default=20, metadata={"help": "Trials of the study in all, over every worker sharing it (null: until timeout)."}
    )
    timeout: float | None = field(default=None, metadata={"help": "Minutes this worker searches (null: no limit)."})
    storage: str | None = field(
        default=None,
        metadata={
            "help": "Where the study lives: a journal file (several workers on one machine) or an RDB URL such as "
            "postgresql://user@host/db (workers on many machines); null: study.journal in the output directory."
        },
    )
    study: str | None = field(default=None, metadata={"help": "The study's name (null: the output directory's name)."})
    pruner: Literal[PRUNERS] = field(
        default="median",
        metadata={
            "help": "Stops trials whose per-epoch validation score is below the median of earlier trials at that "
            "epoch (median) or by successive halving (halving); none runs every trial to the end."
        },
    )
    search_seed: int | None = field(
        default=None, metadata={"help": "The sampler's seed, for a repeatable single-worker search (null: random)."}
    )
    launcher: str | None = field(
        default=None,
        metadata={
            "help": "Runs each trial as `LAUNCHER -m hf_cnn_ft train TRIAL_RECIPE`, e.g. 'accelerate launch "
            "--num_processes 2' (null: in this process, with pruning)."
        },
    )
    cv_folds: int | Literal["auto"] = field(
        default="auto",
        metadata={
            "help": "Score each trial by cross-validation over this many folds of the training and validation images "
            "(1: the validation split alone); auto: 5 when the validation split has fewer than 1,000 images, where "
            "one split's score is too noisy to choose on."
        },
    )


@dataclass(frozen=True)
class Distribution:
    """One key's distribution: `kind` from DISTRIBUTIONS, and its bounds or its choices."""

    kind: str
    values: tuple[Any, ...]

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.values))
        return f"{self.kind} {self.values[0]:g}..{self.values[1]:g}"


def parse_distribution(key: str, spec: Any) -> Distribution:
    """Reads `{kind: [...]}`; a malformed one is one line naming the key and what to write instead."""
    example = f"tune.space.{key}: write {{log_uniform: [1.0e-4, 1.0e-2]}}, {{int: [1, 10]}} or {{choice: [a, b]}}"
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise UserError(f"{example} (got {spec!r})")
    kind, values = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise UserError(f"tune.space.{key}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"{example} (got {spec!r})")
    if kind == "choice":
        return Distribution(kind, tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"tune.space.{key}: {kind} takes two numbers [low, high], got {values!r}")
    low, high = values
    if kind in ("int", "log_int") and not all(float(v).is_integer() for v in values):
        raise UserError(f"tune.space.{key}: {kind} bounds must be integers, got {values!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise UserError(f"tune.space.{key}: {kind} needs low < high, got [{low}, {high}]")
    if kind.startswith("log") and low <= 0:
        raise UserError(f"tune.space.{key}: {kind} needs low > 0, got {low}; use uniform to include 0")
    if kind in ("int", "log_int"):
        return Distribution(kind, (int(low), int(high)))
    return Distribution(kind, (float(low), float(high)))


def check_search_space(space: Mapping[str, Any] | None, known: Any) -> dict[str, Distribution]:
    """The space's distributions by key; `known(key)` tells whether a recipe key exists."""
    distributions = {}
    for key, spec in (space or {}).items():
        if key in UNSEARCHABLE or key in TuneArguments.__dataclass_fields__:
            raise UserError(f"tune.space.{key}: {key} is set by each trial and cannot be searched")
        if not known(key):
            raise UserError(f"tune.space.{key}: unknown recipe key {key!r} (see `hf-cnn-ft train --help`)")
        distributions[key] = parse_distribution(key, spec)
    return distributions


def check_tune(tune: TuneArguments, known: Any) -> None:
    """The tune section's checks, run with every other check when the recipe loads."""
    check_search_space(tune.space, known)
    if tune.trials is not None and tune.trials < 1:
        raise UserError(f"tune.trials: {tune.trials} must be at least 1 (or null, to search until the timeout)")
    if tune.cv_folds != "auto" and tune.cv_folds < 1:
        raise UserError(f"tune.cv_folds: {tune.cv_folds} must be at least 1 (1: the validation split alone), or auto")
    if tune.timeout is not None and not tune.timeout > 0:
        raise UserError(f"tune.timeout: {tune.timeout} minutes must be more than 0 (or null: no limit)")
