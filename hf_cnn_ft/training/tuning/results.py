"""What a search leaves behind: trials.csv, pictures of the search, best_recipe.yaml and its summary."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hf_cnn_ft.config.search import Distribution
from hf_cnn_ft.share.atomic import write_text
from hf_cnn_ft.training.tuning.search_space import sectioned_yaml, without_tune_keys
from hf_cnn_ft.training.tuning.study import ERROR, SCORES, START, SURPLUS, VALUES, WORKER, trial_score

logger = logging.getLogger(__name__)

TRIALS_CSV = "trials.csv"
BEST_RECIPE = "best_recipe.yaml"
BEST_DIR = "best"
# Optuna's pictures of a study, by the file each is saved as.
SEARCH_PICTURES = {
    "search_history.png": ("plot_optimization_history", "the validation score of every trial, and the best so far"),
    "search_importances.png": ("plot_param_importances", "how much each setting mattered (fANOVA)"),
    "search_parallel.png": ("plot_parallel_coordinate", "every finished trial's settings and score"),
}


def recorded_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial the study ran (a worker's surplus trial, never run, is left out)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]


def _seconds(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)


def _state(trial: FrozenTrial) -> str:
    if trial.state == TrialState.FAIL and ERROR not in trial.user_attrs:
        return "interrupted"
    return trial.state.name.lower()


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def trials_table(study: optuna.Study, space: dict[str, Distribution], metric: str) -> str:
    """One row per trial: its number, how it ended, its validation score, time, worker, error and settings."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = ["trial", "state", f"validation_{metric}", "standard_error", "folds", "seconds", "worker", "error"]
    writer.writerow([*head, "start", *space])
    for trial in recorded_trials(study):
        values = trial.user_attrs.get(VALUES, {})
        value, error, folds = trial_score(trial) if trial.state == TrialState.COMPLETE else (None, None, None)
        settings = [_cell(values[key]) if key in values else "" for key in space]
        row = [trial.number, _state(trial), value, error, folds, _seconds(trial), trial.user_attrs.get(WORKER, "")]
        start = trial.user_attrs.get(START) is not None
        writer.writerow([*row, trial.user_attrs.get(ERROR, ""), start, *settings])
    return buffer.getvalue()


@dataclass
class Choice:
    """The trial whose recipe the search returns, and why."""

    trial: FrozenTrial
    reason: str


SIGNIFICANCE = 0.05  # the chance of giving up the starting recipe for a trial that is no better, whatever the trials


def choose_trial(study: optuna.Study) -> Choice:
    """The best trial by its score, unless the evidence that it beats the starting recipe is within what noise gives
    the best of that many trials: with scores per fold, a one-sided paired t-test of its fold differences with the
    start, their variance corrected for folds that share training images (Nadeau & Bengio 2003: 1/k + 1/(k - 1)
    instead of 1/k), at SIGNIFICANCE divided by the number of trials compared with the start (Bonferroni). Otherwise
    the starting recipe: it is what the user had, and the maximum of many noisy scores is noise."""
    best = study.best_trial
    starts = [
        t for t in recorded_trials(study) if t.user_attrs.get(START) is not None and t.state == TrialState.COMPLETE
    ]
    if not starts or best.number == starts[0].number:
        return Choice(best, "the best score" + (" (the starting recipe)" if starts else ""))
    start = starts[0]
    ours, theirs = best.user_attrs.get(SCORES) or [], start.user_attrs.get(SCORES) or []
    if len(ours) < 2 or len(ours) != len(theirs):
        return Choice(best, "the best score (no per-fold scores to weigh it against the starting recipe)")
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    gain, error, p_value = paired_fold_test([sign * (a - b) for a, b in zip(ours, theirs)])
    compared = sum(t.state == TrialState.COMPLETE and t.number != start.number for t in recorded_trials(study))
    bar = SIGNIFICANCE / compared
    evidence = (
        f"{sign * gain:+.4f} ± {error:.4f} over {len(ours)} folds (one-sided p {p_value:.3f}; with {compared} "
        f"trial{'s' if compared > 1 else ''} compared with the start, kept below {bar:.3f})"
    )
    if p_value >= bar:
        return Choice(
            start,
            f"the starting recipe: the best trial ({best.number}) differs from it by {evidence}, not "
            "distinguishable from noise",
        )
    return Choice(best, f"the best score, {evidence} over the starting recipe")


def paired_fold_test(differences: list[float]) -> tuple[float, float, float]:
    """The mean of k per-fold gains, its standard error corrected for the overlap of the folds' training images,
    and the one-sided p-value of a gain above zero (Student's t, k - 1 degrees of freedom)."""
    from scipy import stats

    folds = len(differences)
    gain, spread = statistics.fmean(differences), statistics.stdev(differences)
    error = spread * math.sqrt(1 / folds + 1 / (folds - 1))
    if error == 0:
        return gain, 0.0, 0.0 if gain > 0 else 1.0
    return gain, error, float(stats.t.sf(gain / error, folds - 1))


def draw_search(study: optuna.Study, directory: Path) -> list[str]:
    """Optuna's pictures of the study, those that it can draw (importances need two finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    drawn = []
    for name, (function, _) in SEARCH_PICTURES.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = getattr(plots, function)(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figure.savefig(directory / name, dpi=100)
            plt.close(figure)
            drawn.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            logger.info("no %s: %s", name, exc)
    return drawn


def best_recipe_text(settings: dict[str, Any], best: FrozenTrial, metric: str, recipe_path: str | None) -> str:
    """The chosen trial's recipe, a plain one that trains into OUTPUT_DIR/best."""
    header = (
        f"# Found by `hf-cnn-ft tune {recipe_path or ''}`: trial {best.number}, validation {metric} "
        f"{best.value:.4f}.\n# Train it: hf-cnn-ft train THIS_FILE\n"
    )
    return sectioned_yaml({**without_tune_keys(settings), **best.user_attrs[VALUES]}, header)


def trial_states(study: optuna.Study) -> dict[str, int]:
    """How many trials ended how: complete, pruned, fail, interrupted (and running, mid-search)."""
    states: dict[str, int] = {}
    for trial in recorded_trials(study):
        states[_state(trial)] = states.get(_state(trial), 0) + 1
    return states


def search_summary(
    study: optuna.Study, space: dict[str, Distribution], metric: str, storage: str, pictures: list[str]
) -> dict[str, Any]:
    """What the model card says under "How this recipe was found"."""
    trials = recorded_trials(study)
    choice = choose_trial(study)
    best = choice.trial
    _, error, folds = trial_score(best)
    return {
        "chosen_because": choice.reason,
        "best_validation_standard_error": error,
        "folds": folds,
        "study": study.study_name,
        "storage": storage,
        "metric": metric,
        "trials": trial_states(study),
        "search_seconds": round(sum(s for s in map(_seconds, trials) if s), 1),
        "best_trial": best.number,
        "best_validation": best.value,
        "best_values": best.user_attrs[VALUES],
        "space": {key: distribution.describe() for key, distribution in space.items()},
        "pictures": {name: SEARCH_PICTURES[name][1] for name in pictures},
    }


def write_search_files(directory: Path, table: str, recipe_text: str) -> None:
    write_text(directory / TRIALS_CSV, table)
    write_text(directory / BEST_RECIPE, recipe_text)
