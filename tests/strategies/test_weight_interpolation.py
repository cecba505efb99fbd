"""WiSE-FT: the final model lies where wise_alpha says between the probed start and the fine-tuned end."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_cnn_ft.cli.main import EXIT_USER_ERROR, main
from hf_cnn_ft.config.recipe import build_recipe
from hf_cnn_ft.strategies.wise import AUTO_ALPHAS, START_FILE
from hf_cnn_ft.training.train import train

RUN = {
    **TINY_SETTINGS,
    "strategy": "two_phase",
    "head_epochs": 5,
    "num_train_epochs": 3,
    "load_best_model_at_end": False,
    "early_stopping_patience": "null",
}


def _train(tmp_path, shapes_dir, name: str, **settings) -> dict[str, torch.Tensor]:
    out = tmp_path / name
    assert main(["train", *overrides({**RUN, "dataset": shapes_dir, "output_dir": out, **settings})]) == 0
    return load_file(str(out / "model.safetensors"))


def _floats(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if v.is_floating_point()}


@pytest.mark.slow
def test_alpha_places_the_model_between_the_probe_and_the_fine_tuned_end(tmp_path, shapes_dir):
    probed = _train(tmp_path, shapes_dir, "probe", strategy="linear_probe")
    end = _train(tmp_path, shapes_dir, "end")
    assert any(not torch.equal(probed[k], end[k]) for k in _floats(end))  # fine-tuning moved the weights

    start = _train(tmp_path, shapes_dir, "start", wise_alpha=0)
    assert all(torch.equal(start[k], probed[k]) for k in _floats(end))
    one = _train(tmp_path, shapes_dir, "one", wise_alpha=1)
    assert all(torch.equal(one[k], end[k]) for k in end)

    auto = _train(tmp_path, shapes_dir, "auto", wise_alpha="auto")
    record = json.loads((tmp_path / "auto" / "metrics.json").read_text())["weight_interpolation"]
    alpha, scores = record["alpha"], {float(a): s for a, s in record["validation"].items()}
    assert record["chosen_by"] == "accuracy" and set(scores) == set(AUTO_ALPHAS)
    assert scores[alpha] == max(scores.values())
    for name, value in _floats(end).items():
        torch.testing.assert_close(auto[name], torch.lerp(probed[name], value, alpha))
    assert not (tmp_path / "auto" / START_FILE).exists()  # only a run that may resume keeps the start
    card = (tmp_path / "auto" / "README.md").read_text()
    assert f"at {alpha:g} of the way from the probed model" in card


class _CrashAfterFirstEpoch(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt("simulated crash after the first checkpoint")


@pytest.mark.slow
def test_resumed_run_interpolates_towards_the_same_probed_start(tmp_path, shapes_dir, capsys):
    settings = {**RUN, "dataset": shapes_dir, "wise_alpha": 0.5, "save_total_limit": "null"}
    uninterrupted = _train(tmp_path, shapes_dir, "a", wise_alpha=0.5, save_total_limit="null")

    interrupted = tmp_path / "b"
    as_yaml = {k: None if v == "null" else v for k, v in settings.items()}  # the values a recipe file would hold
    recipe = build_recipe({**as_yaml, "output_dir": str(interrupted)}, "crash")
    with pytest.raises(KeyboardInterrupt):
        train(recipe, callbacks=[_CrashAfterFirstEpoch()])
    assert (interrupted / START_FILE).is_file() and not (interrupted / "metrics.json").exists()

    assert main(["train", *overrides({**settings, "output_dir": interrupted}), "--resume"]) == 0
    resumed = load_file(str(interrupted / "model.safetensors"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)

    # A checkpoint without the probed start (written before checkpoints carried it) cannot interpolate: one
    # clear line, nothing trained.
    again = tmp_path / "c"
    again.mkdir()
    checkpoint = next(interrupted.glob("checkpoint-*"))
    shutil.copytree(checkpoint, again / checkpoint.name, ignore=shutil.ignore_patterns(START_FILE))
    capsys.readouterr()
    assert main(["train", *overrides({**settings, "output_dir": again}), "--resume"]) == EXIT_USER_ERROR
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and START_FILE in error[0] and "without --resume" in error[0]
    assert not (again / "model.safetensors").exists()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"strategy": "linear_probe", "wise_alpha": 0.5}, "use two_phase or gradual"),
        ({"strategy": "full", "wise_alpha": "auto"}, "use two_phase or gradual"),
        ({"wise_alpha": 1.5}, "is not auto or in [0, 1]"),
        ({"wise_alpha": "best"}, "wise_alpha"),
        ({"wise_alpha": 0.5, "peft_method": "lora", "pretrained": True}, "does not combine with peft"),
    ],
)
def test_bad_wise_settings_are_one_clear_line(tmp_path, shapes_dir, capsys, settings, message):
    code = main(["train", *overrides({**RUN, "dataset": shapes_dir, "output_dir": tmp_path / "out", **settings})])
    assert code == EXIT_USER_ERROR
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
