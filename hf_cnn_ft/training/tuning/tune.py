"""`hf-cnn-ft tune`, top to bottom: recipe -> space -> study -> trials -> best recipe -> one test evaluation.

Trials are judged on the validation split; their test split is set aside unread (`data.read_test_split:
false`). When the study has its trials, the best recipe is written as a plain recipe, trained again from
that file into OUTPUT_DIR/best, and evaluated there, once, on the test split. Its model card says how the
recipe was found.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hf_cnn_ft.config.paths import check_output_folder
from hf_cnn_ft.config.reading import parse_overrides, read_recipe_file
from hf_cnn_ft.config.recipe import Recipe, build_recipe, load_recipe
from hf_cnn_ft.config.search import Distribution, TuneArguments
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.share.atomic import write_text
from hf_cnn_ft.share.run_dir import add_to_run
from hf_cnn_ft.share.run_summary import COMPLETION_MARKER, RunSummary, read_summary
from hf_cnn_ft.strategies.shared_features import sharing_features
from hf_cnn_ft.training.artefacts import eval_metric_name
from hf_cnn_ft.training.train import train
from hf_cnn_ft.training.tuning.results import (
    BEST_DIR,
    BEST_RECIPE,
    TRIALS_CSV,
    best_recipe_text,
    choose_trial,
    draw_search,
    recorded_trials,
    search_summary,
    trial_states,
    trials_table,
    write_search_files,
)
from hf_cnn_ft.training.tuning.search_space import check_space_values, recipe_values, search_space, starting_values
from hf_cnn_ft.training.tuning.study import (
    START,
    START_VALUES,
    fail_interrupted_trials,
    masked,
    open_storage,
    open_study,
    run_worker,
)
from hf_cnn_ft.training.tuning.trial import TrialRunner

logger = logging.getLogger(__name__)
AUTO_FOLDS, CROSS_VALIDATE_BELOW = 5, 1000  # tune.cv_folds auto: 5 folds below 1,000 validation images
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial from here, not Optuna's own


@dataclass
class TuneResult:
    """Where the search stands when this worker is done, and the best recipe's one test evaluation."""

    output_dir: Path
    metric: str
    trials: dict[str, int]  # how many trials ended how: complete, pruned, failed, interrupted
    ran_here: int
    best_trial: int
    best_validation: float
    best_dir: Path
    evaluated_on: str
    report: dict[str, Any]  # the retrained best recipe on the evaluation split (test when there is one)


@dataclass
class Search:
    """One worker's view of the search: the study and what its trials share."""

    study: optuna.Study
    settings: dict[str, Any]  # the recipe file's own settings and the command's overrides
    space: dict[str, Distribution]
    metric: str
    output_dir: Path
    storage: str  # for people: the journal path or the URL without its password
    recipe_path: str | None
    tune: TuneArguments
    folds: int = 1  # cross-validation folds scoring each trial


def start_search(
    path: str | Path | None, overrides: Sequence[str] = (), values: dict[str, Any] | None = None
) -> Search:
    """Checks everything a search needs before its first trial: the recipe, every value of the space,
    the storage. Then opens (or resumes) the study and marks its interrupted trials failed."""
    settings = read_recipe_file(Path(path)) if path else {}
    settings.update(parse_overrides(overrides))
    settings.update(values or {})
    recipe = build_recipe(settings, str(path or ""))
    space = search_space(recipe)
    check_space_values(settings, space)
    output_dir = check_output_folder(recipe.training.output_dir, "training.output_dir")
    storage = open_storage(recipe.tune.storage, output_dir)
    greater = bool(recipe.training.greater_is_better)
    study = open_study(storage, recipe.tune.study or output_dir.name, recipe.tune, greater)
    fail_interrupted_trials(study)
    enqueue_start(study, recipe, space)
    metric = eval_metric_name(recipe.training).removeprefix("eval_")
    where = masked(recipe.tune.storage) if recipe.tune.storage else str(output_dir / "study.journal")
    path_text = str(path) if path else None
    return Search(study, settings, space, metric, output_dir, where, path_text, recipe.tune, resolve_folds(recipe))


def resolve_folds(recipe: Recipe) -> int:
    """tune.cv_folds, with auto settled: cross-validation when the validation split is too small to choose on."""
    if recipe.tune.cv_folds != "auto":
        return int(recipe.tune.cv_folds)
    data = load_image_data(replace(recipe.data, read_test_split=False), check_images=False)
    validation = len(data.splits["validation"])
    folds = AUTO_FOLDS if validation < CROSS_VALIDATE_BELOW else 1
    if folds > 1:
        logger.info(
            "tune: %d validation images are too few to choose on: each trial is scored over %d folds of the training "
            "and validation images (tune.cv_folds)",
            validation,
            folds,
        )
    return folds


def enqueue_start(study: optuna.Study, recipe: Recipe, space: dict[str, Distribution]) -> None:
    """Makes the starting recipe the study's first trial (once per study): its own values, where they fit in the
    space, as the trial's parameters; every other key keeps the recipe's value."""
    if any(trial.user_attrs.get(START) is not None for trial in study.get_trials(deepcopy=False)):
        return
    params = starting_values(recipe, space)
    own = recipe_values(recipe, list(space))  # what the trial trains on, in the space or not
    study.enqueue_trial(params, user_attrs={START: list(params), START_VALUES: own}, skip_if_exists=True)


def search(run: Search) -> int:
    """Runs this worker's trials; returns how many."""
    runner = TrialRunner(run.settings, run.space, run.metric, run.output_dir, run.tune.launcher, run.folds)
    with sharing_features():  # trials that differ only above the frozen backbone extract its features once
        return run_worker(run.study, run.tune, runner)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One worker at a time trains the best recipe; the others find it done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _trained_already(best_dir: Path, trial: int) -> bool:
    marker = best_dir / COMPLETION_MARKER
    return marker.is_file() and (read_summary(best_dir).search or {}).get("best_trial") == trial


def finish(run: Search) -> tuple[Path, RunSummary]:
    """Writes trials.csv and best_recipe.yaml, trains the best recipe into OUTPUT_DIR/best (unless a worker
    did already) with its one test evaluation, and records the search in its card. Returns that run's summary."""
    study, output_dir = run.study, run.output_dir
    table = trials_table(study, run.space, run.metric)
    if not any(t.state == TrialState.COMPLETE for t in recorded_trials(study)):
        write_text(output_dir / TRIALS_CSV, table)
        raise UserError(f"no trial of study {study.study_name!r} finished; {output_dir / TRIALS_CSV} has their errors")
    choice = choose_trial(study)
    best, best_dir = choice.trial, output_dir / BEST_DIR
    logger.info("tune chose trial %d: %s", best.number, choice.reason)
    text = best_recipe_text({**run.settings, "output_dir": str(best_dir)}, best, run.metric, run.recipe_path)
    write_search_files(output_dir, table, text)
    with _exclusive(output_dir / ".finish.lock"):
        if not _trained_already(best_dir, best.number):
            shutil.rmtree(best_dir, ignore_errors=True)
            logger.info("training the best recipe (trial %d) again, then its one test evaluation", best.number)
            train(load_recipe(output_dir / BEST_RECIPE))
            pictures = draw_search(study, output_dir)
            for name in pictures:
                shutil.copy2(output_dir / name, best_dir / name)
            add_to_run(best_dir, "search", search_summary(study, run.space, run.metric, run.storage, pictures))
    return best_dir, read_summary(best_dir)


def tune(path: str | Path | None, overrides: Sequence[str] = (), values: dict[str, Any] | None = None) -> TuneResult:
    """Searches the recipe's space with this worker until the study is done, then finishes it."""
    run = start_search(path, overrides, values)
    ran = search(run)
    best_dir, summary = finish(run)
    best = choose_trial(run.study).trial
    states = trial_states(run.study)
    return TuneResult(
        run.output_dir,
        run.metric,
        states,
        ran,
        best.number,
        best.value,
        best_dir,
        summary.evaluated_on,
        summary.evaluation,
    )
