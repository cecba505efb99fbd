"""The study: where it lives, how it samples and prunes, and the loop each worker runs.

Every worker (a `hf-cnn-ft tune` process) runs the same loop on the same storage: a journal file for the
workers of one machine, an RDB URL for workers on many. A trial counts towards `tune.trials` once it is
asked for, unless it failed because its worker was killed: running the command again marks such a trial
failed (its worker, on this machine, is gone) and runs another in its place.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hf_cnn_ft.config.search import TuneArguments
from hf_cnn_ft.errors import UserError, first_line

logger = logging.getLogger(__name__)

# Trial user attributes: who ran it, how it failed, whether it was one too many, its values, its score per fold, and
# (on the starting recipe's trial) the keys of the space whose values are the recipe's own.
WORKER, ERROR, SURPLUS, VALUES, SCORES, START = "worker", "error", "surplus", "values", "scores", "start"
START_VALUES = "start_values"  # the starting recipe's own value of every key of the space
JOURNAL_FILE = "study.journal"


def masked(url: str) -> str:
    """The storage URL without its password: it goes into logs, trials and the model card."""
    if "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def open_storage(location: str | None, output_dir: Path) -> optuna.storages.BaseStorage:
    """A journal file (a path; default OUTPUT_DIR/study.journal) or an RDB URL, reached now: an unreachable
    one is one line before any training."""
    if location is None or "://" not in location:
        path = Path(location) if location else output_dir / JOURNAL_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
        except OSError as exc:
            raise UserError(f"tune.storage: cannot write the study journal {path}: {first_line(exc)}") from None
        return optuna.storages.JournalStorage(backend)
    try:
        return optuna.storages.RDBStorage(location, engine_kwargs={"pool_pre_ping": True})
    except ImportError as exc:  # Optuna wraps the driver's ModuleNotFoundError
        driver = getattr(exc, "name", None) or getattr(exc.__cause__, "name", None) or "its driver"
        raise UserError(
            f"tune.storage: {masked(location)} needs a database driver that is not installed ({driver}): pip "
            "install it, or name an installed one in the URL (postgresql+psycopg2://, mysql+pymysql://)"
        ) from None
    except Exception as exc:  # sqlalchemy's errors: a wrong host, port, password or database name
        raise UserError(f"tune.storage: cannot reach {masked(location)}: {first_line(exc)}") from None


def _sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: parallel workers do not all propose the point the running trials already try
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def _pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(storage: optuna.storages.BaseStorage, name: str, tune: TuneArguments, greater: bool) -> optuna.Study:
    """The study of that name, created on first use, resumed after."""
    return optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=_sampler(tune.search_seed),
        pruner=_pruner(tune.pruner),
        direction="maximize" if greater else "minimize",
        load_if_exists=True,
    )


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_interrupted_trials(study: optuna.Study) -> list[int]:
    """Marks failed the running trials whose worker on this machine is gone (killed, or the machine
    restarted); returns their numbers. Workers on other machines mark their own when they restart."""
    host, interrupted = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            interrupted.append(trial.number)
            logger.warning("trial %d was interrupted (its worker, pid %s, is gone): marked failed", trial.number, pid)
    return interrupted


def counts_towards_budget(trial: FrozenTrial) -> bool:
    """Finished, pruned, running, or failed with an error of its own; not interrupted, not surplus."""
    if trial.state == TrialState.FAIL:
        return ERROR in trial.user_attrs
    return True


def _budget_spent(study: optuna.Study, trials: int | None, before: int | None = None) -> bool:
    if trials is None:
        return False
    counted = [
        t
        for t in study.get_trials(deepcopy=False)
        if counts_towards_budget(t) and (before is None or t.number < before)
    ]
    return len(counted) >= trials


def run_worker(study: optuna.Study, tune: TuneArguments, objective: Callable[[optuna.Trial], float]) -> int:
    """Runs trials until the study holds `tune.trials` (over every worker) or this worker's timeout has
    passed (no trial starts after it); returns how many this worker ran."""
    deadline = None if tune.timeout is None else time.monotonic() + 60 * tune.timeout
    ran = 0
    while not _budget_spent(study, tune.trials) and (deadline is None or time.monotonic() < deadline):
        trial = study.ask()
        trial.set_user_attr(WORKER, worker_id())
        if _budget_spent(study, tune.trials, before=trial.number):  # another worker took the last one
            trial.set_user_attr(SURPLUS, True)
            study.tell(trial, state=TrialState.FAIL)
            break
        _run_trial(study, trial, objective)
        ran += 1
    return ran


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> None:
    """Runs one trial and records how it ended; a crash or running out of memory fails the trial, not the study."""
    try:
        value = objective(trial)
    except optuna.TrialPruned as pruned:
        logger.info("trial %d pruned: %s", trial.number, pruned)
        study.tell(trial, state=TrialState.PRUNED)
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL)  # interrupted: not counted, run again next time
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a trial is that trial's
        trial.set_user_attr(ERROR, f"{type(exc).__name__}: {first_line(exc)}")
        logger.warning("trial %d failed (%s: %s); the study goes on", trial.number, type(exc).__name__, first_line(exc))
        study.tell(trial, state=TrialState.FAIL)
        _free_accelerator_memory()
    else:
        study.tell(trial, value)
        logger.info("%s", trial_line(study, trial.number))


def trial_score(trial: FrozenTrial) -> tuple[float, float | None, int]:
    """A finished trial's score, its standard error over the folds (None from a single validation split) and
    how many folds it has."""
    scores = trial.user_attrs.get(SCORES) or [trial.value]
    if len(scores) < 2:
        return float(trial.value), None, len(scores)
    return float(trial.value), statistics.stdev(scores) / math.sqrt(len(scores)), len(scores)


def trial_line(study: optuna.Study, number: int) -> str:
    """One line for a finished trial: its score with its uncertainty, its time, and the best so far."""
    trial = study.get_trials(deepcopy=False)[number]
    value, error, folds = trial_score(trial)
    spread = f" ± {error:.4f} over {folds} folds" if error is not None else ""
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
    start = " (the starting recipe)" if trial.user_attrs.get(START) is not None else ""
    best = study.best_trial.number
    return f"trial {number}{start}: validation {value:.4f}{spread}, {seconds:.0f} s; best so far: trial {best}"


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
