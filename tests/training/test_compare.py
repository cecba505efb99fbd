"""`hf-cnn-ft compare`: several backbones, one recipe, a leaderboard; a failing candidate is a row."""

from __future__ import annotations

import csv
import re

import pytest
import yaml
from conftest import TINY_SETTINGS, overrides

from hf_cnn_ft.cli.main import main


@pytest.mark.slow
def test_compare_two_models_and_a_failing_third(tmp_path, shapes_dir, capsys):
    out = tmp_path / "compare"
    settings = {**TINY_SETTINGS, "num_train_epochs": 2, "dataset": shapes_dir, "output_dir": out}
    models = "test_resnet,no_such_backbone,test_efficientnet"
    assert main(["compare", *overrides(settings), "--models", models, "--seeds", "2", "--splits", "0"]) == 0

    with (out / "leaderboard.csv").open() as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"test_resnet", "test_efficientnet", "no_such_backbone"}
    failed = rows["no_such_backbone"]
    assert failed["status"] == "failed" and "unknown model 'no_such_backbone'" in failed["error"]
    for name in ("test_resnet", "test_efficientnet"):
        row = rows[name]
        assert row["status"] == "ok" and row["seeds"] == "2"
        assert 0.0 <= float(row["accuracy_mean"]) <= 1.0 and int(row["parameters"]) > 0
        assert float(row["inference_images_per_second"]) > 0
        for seed in (42, 43):  # every candidate ran under the same seeds, each in its own directory
            assert (out / name / f"seed{seed}" / "metrics.json").is_file()
    ok_rows = [r for r in rows.values() if r["status"] == "ok"]
    assert float(ok_rows[0]["f1_macro_mean"]) >= float(ok_rows[1]["f1_macro_mean"])  # ranked by macro-F1

    board = (out / "leaderboard.md").read_text()
    assert "| 1 | `" in board and "failed: UserError: unknown model 'no_such_backbone'" in board
    assert (out / "leaderboard.png").stat().st_size > 10_000
    assert "leaderboard:" in capsys.readouterr().out


def test_compare_without_a_dataset_is_one_error_not_a_failed_row_per_model(tmp_path, capsys):
    assert main(["compare", "--output_dir", str(tmp_path / "c"), "--models", "test_resnet,test_efficientnet"]) == 2
    assert "no dataset given" in capsys.readouterr().err and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_compare_over_resampled_splits_gives_intervals(tmp_path, shapes_dir):
    out = tmp_path / "compare"
    settings = {**TINY_SETTINGS, "num_train_epochs": 1, "dataset": shapes_dir, "output_dir": out}
    assert main(["compare", *overrides(settings), "--models", "test_resnet", "--splits", "3"]) == 0

    for split in range(3):  # one run per split, each on its own draw of the images
        recipe = yaml.safe_load((out / "test_resnet" / f"split{split}-seed42" / "recipe.yaml").read_text())
        assert recipe["data"]["resplit"] is True and recipe["data"]["split_seed"] == split
    board = (out / "leaderboard.md").read_text()
    assert "3 resampled splits x 1 seed(s)" in board
    row = next(line for line in board.splitlines() if "`test_resnet`" in line)
    accuracy = row.split("|")[3]  # mean ± std [low, high]
    mean, _std, low, high = (float(x) for x in re.findall(r"\d\.\d{4}", accuracy))
    assert low <= mean <= high
