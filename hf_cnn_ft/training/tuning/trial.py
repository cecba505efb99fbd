"""One trial: the ordinary training path with the trial's recipe, judged on the validation split.

In this process, each validation score (every probe epoch, every Trainer evaluation) is reported to the
study, and a trial the pruner stops ends at once. With a launcher (`accelerate launch ...`) the trial is
`LAUNCHER -m hf_cnn_ft train TRIAL_RECIPE`, exactly as a user would run it, and is judged when it ends.
"""

from __future__ import annotations

import json
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from transformers import TrainerCallback

from hf_cnn_ft.config.recipe import build_recipe
from hf_cnn_ft.config.search import Distribution
from hf_cnn_ft.share.run_summary import read_summary
from hf_cnn_ft.training.train import train
from hf_cnn_ft.training.tuning.search_space import sectioned_yaml, suggest, trial_settings
from hf_cnn_ft.training.tuning.study import SCORES, START, START_VALUES, VALUES

TRIALS_DIR = "trials"
PRUNED_FILE = "pruned.json"  # in the folder of a trial the pruner stopped: why, and the values it tried


class ValidationReporter(TrainerCallback):
    """Reports each validation score to the trial, numbered by epochs trained (probe epochs, then the
    Trainer's), and stops the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.key, self.probe_epochs = trial, f"eval_{metric}", 0

    def _report(self, value: float | None, step: int) -> None:
        if value is None:
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation {self.key.removeprefix('eval_')} {value:.4f} after {step} epochs")

    def on_probe_epoch(self, entry: dict[str, float]) -> None:
        self.probe_epochs = int(entry["epoch"])
        self._report(entry.get(self.key), self.probe_epochs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._report((metrics or {}).get(self.key), self.probe_epochs + round(state.epoch or 0))


@dataclass
class TrialRunner:
    """What every trial shares: the recipe's settings, the space, the metric, where trials go, the launcher."""

    settings: dict[str, Any]
    space: dict[str, Distribution]
    metric: str  # metric_for_best_model without eval_
    output_dir: Path
    launcher: str | None = None
    folds: int = 1  # cross-validation folds of train + validation that score a trial (1: the validation split)

    def __call__(self, trial: optuna.Trial) -> float:
        # The starting recipe is a trial of its own: its values are the recipe's, not the sampler's.
        values = {
            **trial.user_attrs.get(START_VALUES, {}),
            **suggest(trial, self.space, only=trial.user_attrs.get(START)),
        }
        trial.set_user_attr(VALUES, values)
        directory = self.output_dir / TRIALS_DIR / f"trial-{trial.number:04d}"
        scores: list[float] = []
        for fold in range(self.folds):
            where = directory / f"fold-{fold}" if self.folds > 1 else directory
            crossed = {"folds": self.folds, "fold": fold} if self.folds > 1 else {}
            try:
                scores.append(self._score(trial, {**trial_settings(self.settings, values, where), **crossed}, where))
            except optuna.TrialPruned as pruned:
                _keep_pruned(directory, str(pruned), values)
                raise
            finally:
                _drop_weights(where)
            trial.set_user_attr(SCORES, scores)
            if self.folds > 1:  # pruned on the running mean of the folds, numbered by fold
                trial.report(statistics.fmean(scores), fold)
                if trial.should_prune():
                    reason = f"mean validation {self.metric} {statistics.fmean(scores):.4f}"
                    _keep_pruned(directory, reason, values)
                    raise optuna.TrialPruned(reason)
        return statistics.fmean(scores)

    def _score(self, trial: optuna.Trial, settings: dict[str, Any], directory: Path) -> float:
        """One training of the trial's recipe, judged on its validation split (a fold's, when crossing)."""
        if self.launcher:
            return self._launched(settings, directory)
        reporter = ValidationReporter(trial, self.metric) if self.folds == 1 else None
        callbacks, on_probe = ([reporter], reporter.on_probe_epoch) if reporter else ([], lambda entry: None)
        result = train(build_recipe(settings), callbacks=callbacks, probe_epoch_end=on_probe)
        return float(result.report[self.metric])

    def _launched(self, settings: dict[str, Any], directory: Path) -> float:
        directory.mkdir(parents=True, exist_ok=True)
        recipe_path = directory.parent / f"{directory.name}.yaml"
        recipe_path.write_text(sectioned_yaml(settings))
        command = [*shlex.split(self.launcher), "-m", "hf_cnn_ft", "train", str(recipe_path)]
        if command[0] == "python":
            command[0] = sys.executable
        log_path = directory.parent / f"{directory.name}.log"
        with log_path.open("w") as log:
            finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
        if finished.returncode != 0:
            last = log_path.read_text().strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"`{shlex.join(command)}` exited with {finished.returncode}: {last[0]}")
        return float(read_summary(directory).evaluation[self.metric])


def _keep_pruned(directory: Path, reason: str, values: dict[str, Any]) -> None:
    """A trial stopped before its run wrote anything still has its folder, saying why it stopped."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PRUNED_FILE).write_text(json.dumps({"reason": reason, "values": values}, indent=2) + "\n")


def _drop_weights(directory: Path) -> None:
    """A trial keeps its scores, recipe and curves; the best recipe is trained again at the end."""
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.name.startswith("checkpoint-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix in (".safetensors", ".bin", ".pt"):
            path.unlink(missing_ok=True)
