"""`hf-cnn-ft tune`: the search runs the ordinary training path per trial, judges it on validation only,
shares one study between workers, survives kill -9, prunes hopeless trials, and checks its space first."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from conftest import TINY_SETTINGS, cli_env
from optuna.trial import TrialState

from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.config.search import parse_distribution
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.extras.synthetic import make_shapes_folder
from hf_cnn_ft.strategies.registry import STRATEGIES
from hf_cnn_ft.training.train import train
from hf_cnn_ft.training.tuning.results import TRIALS_CSV
from hf_cnn_ft.training.tuning.search_space import check_space_values, search_space, sectioned_yaml
from hf_cnn_ft.training.tuning.study import JOURNAL_FILE, masked
from hf_cnn_ft.training.tuning.tune import finish, search, start_search, tune

# Linear-probe trials on the tiny model: about a second each.
PROBE_SETTINGS = {
    **TINY_SETTINGS,
    "strategy": "linear_probe",
    "head_epochs": 6,
    "report_at_end": False,
    "cv_folds": 1,  # judged on the validation split itself (cross-validation has tests of its own below)
}
SPACE = {"head_learning_rate": {"log_uniform": [1.0e-3, 3.0e-2]}, "head_epochs": {"int": [3, 8]}}


def write_recipe(path: Path, settings: dict) -> Path:
    path.write_text(sectioned_yaml({key: str(v) if isinstance(v, Path) else v for key, v in settings.items()}))
    return path


def trials_csv(output_dir: Path) -> list[dict[str, str]]:
    with (output_dir / TRIALS_CSV).open() as handle:
        return list(csv.DictReader(handle))


def journal_study(output_dir: Path) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(output_dir / JOURNAL_FILE))
    return optuna.load_study(study_name=output_dir.name, storage=optuna.storages.JournalStorage(backend))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"log_uniform": [0, 1]}, "needs low > 0"),
        ({"uniform": [1, 0]}, "needs low < high"),
        ({"int": [1.5, 3]}, "bounds must be integers"),
        ({"normal": [0, 1]}, "unknown distribution 'normal'"),
        ({"choice": []}, "write {log_uniform"),
        ([1e-4, 1e-2], "write {log_uniform"),
    ],
)
def test_a_malformed_distribution_is_one_line_naming_the_key(spec, message):
    with pytest.raises(UserError, match=message) as error:
        parse_distribution("learning_rate", spec)
    assert str(error.value).startswith("tune.space.learning_rate:") and "\n" not in str(error.value)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("probe_stages", [0, 2])
def test_every_strategys_default_space_builds_valid_recipes(strategy, probe_stages, shapes_dir):
    settings = {"dataset": str(shapes_dir), "model": "test_resnet", "strategy": strategy}
    if probe_stages and STRATEGIES[strategy].preset.probes:
        settings["probe_stages"] = probe_stages
    space = search_space(load_recipe(None, values=settings))
    assert len(space) >= 5
    check_space_values(settings, space)  # every bound and choice, one key at a time
    if settings.get("probe_stages"):  # a stage probe's epochs cost what Trainer epochs do
        assert space["head_epochs"].values[1] <= 10 and "probe_stages" in space


def test_the_storage_password_never_reaches_a_message():
    assert (
        masked("postgresql://optuna:s3cret@db.example:5432/studies")
        == "postgresql://optuna:***@db.example:5432/studies"
    )
    assert masked("sqlite:///study.db") == "sqlite:///study.db"


@pytest.mark.slow
def test_the_best_recipe_trains_to_the_best_trials_validation_score(tmp_path, shapes_dir):
    out = tmp_path / "search"
    values = {**PROBE_SETTINGS, "dataset": shapes_dir, "output_dir": out, "space": SPACE, "trials": 4}
    result = tune(None, values={**values, "search_seed": 0})

    rows = trials_csv(out)
    assert [row["trial"] for row in rows] == ["0", "1", "2", "3"]
    assert all(row["state"] == "complete" for row in rows)
    best_row = max(rows, key=lambda row: float(row["validation_accuracy"]))
    assert result.best_validation == pytest.approx(float(best_row["validation_accuracy"]))
    for trial_dir in (out / "trials").iterdir():  # judged on validation: no test split was loaded
        summary = json.loads((trial_dir / "metrics.json").read_text())
        assert summary["evaluated_on"] == "validation" and "test" not in summary["split_sizes"]
        assert not list(trial_dir.glob("*.safetensors")), "a trial's weights are dropped once it is judged"

    best = yaml.safe_load((out / "best_recipe.yaml").read_text())
    assert "tune" not in best, "the best recipe is a plain one"
    assert best["finetune"]["head_epochs"] == int(best_row["head_epochs"])
    again = train(
        load_recipe(out / "best_recipe.yaml", values={"output_dir": tmp_path / "again", "read_test_split": False})
    )
    assert again.report["accuracy"] == pytest.approx(result.best_validation, abs=1e-9)

    assert result.evaluated_on == "test" and result.report["num_samples"] > 0
    card = (out / "best" / "README.md").read_text()
    assert "## How this recipe was found" in card and f"trial {result.best_trial}" in card
    assert (out / "search_history.png").is_file() and (out / "best" / "search_history.png").is_file()


@pytest.mark.slow
def test_trials_share_frozen_features_and_get_what_they_would_alone(tmp_path, shapes_dir):
    from hf_cnn_ft.strategies import shared_features

    settings = {**PROBE_SETTINGS, "dataset": shapes_dir, "feature_views": 3, "read_test_split": False}
    alone = train(load_recipe(None, values={**settings, "output_dir": tmp_path / "alone"}))
    with shared_features.sharing_features():
        train(load_recipe(None, values={**settings, "head_learning_rate": 1e-2, "output_dir": tmp_path / "a"}))
        kept = dict(shared_features._shared)
        assert len(kept) == 4  # three training views and the validation images
        shared = train(load_recipe(None, values={**settings, "output_dir": tmp_path / "b"}))
        assert shared_features._shared.keys() == kept.keys(), "the second trial extracted nothing new"
        train(load_recipe(None, values={**settings, "crop_mode": "squash", "output_dir": tmp_path / "c"}))
        assert len(shared_features._shared) == 8, "other input settings, other features"
    assert shared_features._shared is None
    probe_end = [json.loads((r.output_dir / "metrics.json").read_text())["linear_probe"] for r in (shared, alone)]
    assert probe_end[0]["eval_loss"] == pytest.approx(probe_end[1]["eval_loss"], abs=1e-6)
    assert shared.report["accuracy"] == alone.report["accuracy"]


def make_fixed_splits(root: Path) -> Path:
    for split, seed in (("train", 0), ("validation", 1), ("test", 2)):
        make_shapes_folder(root / split, per_class=12 if split == "train" else 6, size=40, seed=seed)
    return root


@pytest.mark.slow
def test_the_search_never_opens_a_test_image(tmp_path):
    """An audit hook sees every file this process opens: none of the test split's until the search is over."""
    dataset = make_fixed_splits(tmp_path / "fixed")
    test_dir = str(dataset / "test")
    opened: list[str] = []

    def watch(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str) and args[0].startswith(test_dir):
            opened.append(args[0])

    sys.addaudithook(watch)  # stays for the session; it only records paths under this test's folder
    values = {**PROBE_SETTINGS, "dataset": dataset, "output_dir": tmp_path / "out", "space": SPACE, "trials": 3}
    run = start_search(None, values=values)
    search(run)
    assert opened == [], f"the search read test images: {opened[:3]}"
    finish(run)
    assert opened, "the best recipe's one test evaluation reads the test split (the hook works)"


@pytest.mark.slow
def test_a_trial_that_crashes_is_recorded_with_its_error_and_the_search_goes_on(tmp_path, shapes_dir):
    out = tmp_path / "out"
    space = {"model": {"choice": ["test_resnet", "no_such_architecture"]}}
    values = {**PROBE_SETTINGS, "dataset": shapes_dir, "output_dir": out, "space": space, "trials": 4}
    tune(None, values={**values, "search_seed": 1})
    rows = trials_csv(out)
    failed = [row for row in rows if row["state"] == "fail"]
    assert failed and all(row["model"] == "no_such_architecture" and row["error"] for row in failed)
    assert any(row["state"] == "complete" for row in rows) and len(rows) == 4


@pytest.mark.slow
def test_pruning_stops_trials_that_cannot_learn(tmp_path, shapes_dir):
    out = tmp_path / "out"
    space = {"head_learning_rate": {"choice": [3.0e-2, 1.0e-9]}}  # the second cannot move the head
    values = {**PROBE_SETTINGS, "dataset": shapes_dir, "output_dir": out, "space": space, "trials": 12}
    tune(None, values={**values, "head_epochs": 8, "head_learning_rate": 3.0e-2, "search_seed": 0})  # a learning start
    rows = trials_csv(out)
    stuck = [row["state"] for row in rows if float(row["head_learning_rate"]) < 1e-6]
    learning = [row["state"] for row in rows if float(row["head_learning_rate"]) > 1e-6]
    assert "pruned" in stuck, rows
    assert "pruned" not in learning and "complete" in learning
    for row in rows:  # a trial stopped before its run wrote anything still has its folder, saying why
        pruned = out / "trials" / f"trial-{int(row['trial']):04d}" / "pruned.json"
        assert pruned.is_file() == (row["state"] == "pruned"), row
        if row["state"] == "pruned":
            note = json.loads(pruned.read_text())
            assert note["reason"].startswith("validation accuracy") and note["values"]["head_learning_rate"] < 1e-6


@pytest.mark.parametrize(
    "override, message",
    [
        (["--space", "{learnin_rate: {uniform: [0.1, 0.2]}}"], "tune.space.learnin_rate: unknown recipe key"),
        (["--space", "{crop_mode: {choice: [center, diagonal]}}"], "tune.space.crop_mode: the value 'diagonal' fails"),
        (["--space", "{learning_rate: {log_uniform: [0.0, 0.1]}}"], "needs low > 0"),
        (
            ["--storage", "postgresql://optuna:s3cret@127.0.0.1:9/studies"],
            "tune.storage: postgresql://optuna:***@127.0.0.1:9/studies needs a",
        ),
        (["--storage", "sqlite:////no/such/folder/study.db"], "tune.storage: cannot reach sqlite:////no/such"),
    ],
)
def test_bad_spaces_and_storages_are_one_line_before_any_training(tmp_path, shapes_dir, override, message, capsys):
    from hf_cnn_ft.cli.main import main

    out = tmp_path / "out"
    code = main(["tune", "--dataset", str(shapes_dir), "--model", "test_resnet", "--output_dir", str(out), *override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err
    assert "s3cret" not in err
    assert not (out / "trials").exists()


def tune_command(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hf_cnn_ft", "tune", str(recipe), *extra]


@pytest.mark.slow
def test_two_workers_on_one_journal_share_the_study_without_duplicates(tmp_path, shapes_dir):
    out = tmp_path / "shared"
    recipe = write_recipe(
        tmp_path / "recipe.yaml", {**PROBE_SETTINGS, "dataset": shapes_dir, "output_dir": out, "space": SPACE}
    )
    command = tune_command(recipe, "--trials", "10", "--storage", str(tmp_path / "shared.journal"))
    workers = [subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in "ab"]
    outputs = [worker.communicate(timeout=600)[0].decode() for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "shared.journal"))
    )
    trials = [
        t for t in optuna.load_study(study_name="shared", storage=storage).trials if not t.user_attrs.get("surplus")
    ]
    assert len(trials) == 10 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.number for t in trials}) == 10
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers ran trials"
    assert sorted(p.name for p in (out / "trials").iterdir()) == [
        f"trial-{t.number:04d}" for t in sorted(trials, key=lambda t: t.number)
    ]


@pytest.mark.slow
def test_a_killed_search_resumes_with_the_same_command(tmp_path, shapes_dir):
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        {**PROBE_SETTINGS, "dataset": shapes_dir, "output_dir": out, "space": SPACE, "head_epochs": 200},
    )
    command = tune_command(recipe, "--trials", "4", "--space", "{head_learning_rate: {log_uniform: [0.001, 0.03]}}")
    process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, kept = time.monotonic() + 300, []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / JOURNAL_FILE).exists():
                trials = journal_study(out).trials
                kept = [t for t in trials if t.state == TrialState.COMPLETE]
                if kept and trials[-1].state == TrialState.RUNNING:
                    break
            time.sleep(0.2)
        assert process.poll() is None and kept, "the search ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    resumed = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "was interrupted" in resumed.stderr
    trials = journal_study(out).trials
    assert [(t.number, t.value) for t in trials[: len(kept)]] == [(t.number, t.value) for t in kept]
    states = [row["state"] for row in trials_csv(out)]
    assert states.count("interrupted") == 1 and states.count("complete") == 4
    assert (out / "best" / "metrics.json").is_file()


@pytest.mark.slow
def test_a_launcher_runs_each_trial_as_its_own_train_command(tmp_path, shapes_dir):
    out = tmp_path / "out"
    values = {**PROBE_SETTINGS, "dataset": shapes_dir, "output_dir": out, "space": SPACE, "trials": 2}
    result = tune(None, values={**values, "launcher": "python"})
    rows = trials_csv(out)
    assert [row["state"] for row in rows] == ["complete", "complete"]
    assert (out / "trials" / "trial-0000.yaml").is_file() and (out / "trials" / "trial-0000.log").is_file()
    assert result.best_validation == max(float(row["validation_accuracy"]) for row in rows)


@pytest.mark.slow
def test_the_starting_recipe_is_the_first_trial_and_every_trial_is_one_line(tmp_path, shapes_dir, caplog):
    out = tmp_path / "search"
    values = {**PROBE_SETTINGS, "dataset": shapes_dir, "output_dir": out, "space": SPACE, "trials": 3}
    values.update(head_learning_rate=0.02, head_epochs=5, search_seed=0)
    with caplog.at_level("INFO", logger="hf_cnn_ft"):
        tune(None, values=values)
    rows = trials_csv(out)
    assert rows[0]["start"] == "True" and [row["start"] for row in rows[1:]] == ["False", "False"]
    assert float(rows[0]["head_learning_rate"]) == 0.02 and rows[0]["head_epochs"] == "5"
    lines = [r.message for r in caplog.records if r.message.startswith("trial ")]
    assert lines[0].startswith("trial 0 (the starting recipe): validation ") and len(lines) == 3
    assert all("best so far: trial" in line for line in lines)


@pytest.mark.slow
def test_a_small_validation_split_scores_every_trial_over_folds(tmp_path, shapes_dir):
    out = tmp_path / "search"
    values = {**PROBE_SETTINGS, "dataset": shapes_dir, "output_dir": out, "space": SPACE, "trials": 2}
    values["cv_folds"] = "auto"  # 12 validation images: too few to choose on
    result = tune(None, values=values)
    rows = trials_csv(out)
    assert [row["folds"] for row in rows] == ["5", "5"] and all(float(row["standard_error"]) >= 0 for row in rows)
    assert sorted(p.name for p in (out / "trials" / "trial-0001").iterdir()) == [f"fold-{k}" for k in range(5)]
    summary = json.loads((out / "best" / "metrics.json").read_text())["search"]
    assert summary["folds"] == 5 and summary["chosen_because"]
    assert result.evaluated_on == "test"


def _finished(study: optuna.Study, value_per_fold: list[float], start: bool) -> None:
    distribution = optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    study.add_trial(
        optuna.trial.create_trial(
            value=sum(value_per_fold) / len(value_per_fold),
            params={"head_learning_rate": 1e-2},
            distributions={"head_learning_rate": distribution},
            user_attrs={"scores": value_per_fold, "values": {}, **({"start": ["head_learning_rate"]} if start else {})},
        )
    )


def test_a_best_trial_within_the_noise_of_the_start_gives_back_the_start():
    from hf_cnn_ft.training.tuning.results import choose_trial

    study = optuna.create_study(direction="maximize")
    _finished(study, [0.70, 0.80, 0.60, 0.75, 0.72], start=True)
    _finished(study, [0.74, 0.76, 0.66, 0.73, 0.75], start=False)  # +0.014 mean, fold differences all over
    choice = choose_trial(study)
    assert choice.trial.number == 0 and "not distinguishable" in choice.reason
    _finished(study, [0.80, 0.88, 0.70, 0.84, 0.81], start=False)  # better on every fold
    choice = choose_trial(study)
    assert choice.trial.number == 2 and "over the starting recipe" in choice.reason


def test_the_bar_for_leaving_the_start_grows_with_the_trials_compared():
    from hf_cnn_ft.training.tuning.results import choose_trial

    start = [0.70, 0.80, 0.60, 0.75, 0.72]
    better = [s + gain for s, gain in zip(start, [0.04, 0.02, 0.05, 0.01, 0.03])]  # +0.03, one-sided p about 0.02
    alone = optuna.create_study(direction="maximize")
    _finished(alone, start, start=True)
    _finished(alone, better, start=False)
    assert choose_trial(alone).trial.number == 1

    many = optuna.create_study(direction="maximize")
    _finished(many, start, start=True)
    for _ in range(9):
        _finished(many, [s - 0.05 for s in start], start=False)
    _finished(many, better, start=False)  # the same gain, now the best of ten draws
    choice = choose_trial(many)
    assert choice.trial.number == 0 and "10 trials compared" in choice.reason


def test_a_lower_is_better_metric_keeps_a_trial_whose_loss_is_lower_on_every_fold():
    from hf_cnn_ft.training.tuning.results import choose_trial

    study = optuna.create_study(direction="minimize")
    _finished(study, [0.90, 0.80, 1.00, 0.85, 0.95], start=True)
    _finished(study, [0.70, 0.62, 0.78, 0.66, 0.74], start=False)
    choice = choose_trial(study)
    assert choice.trial.number == 1 and choice.reason.startswith("the best score, -0.2")


def test_trials_no_better_than_the_start_rarely_replace_it_however_many_are_drawn():
    """Simulated searches of ten trials that are all as good as the start, with fold scores that share each
    fold's difficulty: the start must come back in at least 95% of them (one standard error let the best of ten
    through in most)."""
    from hf_cnn_ft.training.tuning.results import choose_trial

    rng = np.random.default_rng(0)
    replaced = 0
    for _ in range(200):
        study = optuna.create_study(direction="maximize")
        difficulty = rng.normal(0.7, 0.05, 5)
        for number in range(11):
            _finished(study, list(difficulty + rng.normal(0, 0.02, 5)), start=number == 0)
        replaced += choose_trial(study).trial.number != 0
    assert replaced / 200 <= 0.05
