"""What a search leaves behind: trials.csv, pictures of the search, best_recipe.yaml and its summary."""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hf_cnn_ft.config.search import Distribution
from hf_cnn_ft.share.run_dir import write_text
from hf_cnn_ft.training.tuning.space import sectioned_yaml, without_tune_keys
from hf_cnn_ft.training.tuning.study import ERROR, SURPLUS, VALUES, WORKER

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
    writer.writerow(["trial", "state", f"validation_{metric}", "seconds", "worker", "error", *space])
    for trial in recorded_trials(study):
        values = trial.user_attrs.get(VALUES, {})
        value = trial.value if trial.state == TrialState.COMPLETE else None
        settings = [_cell(values[key]) if key in values else "" for key in space]
        row = [trial.number, _state(trial), value, _seconds(trial), trial.user_attrs.get(WORKER, "")]
        writer.writerow([*row, trial.user_attrs.get(ERROR, ""), *settings])
    return buffer.getvalue()


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
    """The best trial's recipe, a plain one that trains into OUTPUT_DIR/best."""
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
    best = study.best_trial
    return {
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
