"""A run's folder is never lost: one run at a time in it, never trained over without --overwrite (and then the
old run stays whole until the new one has finished), and a checkpoint folder copied anywhere resumes to the
same final weights as the run that was never interrupted."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, cli_env, overrides
from safetensors.torch import load_file

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.checkpoints import checkpoints, is_complete_checkpoint, replacement_dir
from hf_cnn_ft.share.claim import LOCK_FILE

pytestmark = pytest.mark.slow


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _command(settings: dict, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hf_cnn_ft", "train", *overrides(settings), *extra]


def _wait_for_checkpoint(folder: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(is_complete_checkpoint(p) for p in folder.glob("checkpoint-*")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint in {folder} while the run was alive (exit {process.poll()})")


def test_overwrite_keeps_the_old_run_whole_until_the_new_one_finishes_and_one_run_at_a_time(
    trained_run, shapes_dir, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    old = _files(out)
    settings = {**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": out, "num_train_epochs": 40, "seed": 7}
    settings.update(early_stopping_patience="null", top_losses=0, correct_per_class=0)
    replacing = subprocess.Popen(_command(settings, "--overwrite"), env=cli_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(replacement_dir(out), replacing)
        assert _files(out) == {**old, LOCK_FILE: (out / LOCK_FILE).read_bytes()}, "the old run changed"
        # A second run into the same folder is refused, naming the process that holds it.
        second = subprocess.run(_command(settings, "--overwrite"), env=cli_env(), capture_output=True, text=True)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by another run (process {replacing.pid} on" in second.stderr
        replacing.send_signal(signal.SIGKILL)
        replacing.wait(timeout=30)
    finally:
        if replacing.poll() is None:
            replacing.kill()
    old_files = {k: v for k, v in _files(out).items() if k != LOCK_FILE}
    assert old_files == old, "a killed replacement damaged the run it was replacing"

    resumed = subprocess.run(
        _command({**settings, "num_train_epochs": 40}, "--overwrite", "--resume"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "took over the lock" in resumed.stderr and "resuming from" in resumed.stderr
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs_trained"] == 40 and "seed: 7" in (out / "recipe.yaml").read_text()
    assert not replacement_dir(out).exists() and not (out / LOCK_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no retired copy, no replacement left behind


def _base_model(folder: Path) -> Path:
    """A small 'pretrained' model directory, for the adapter strategy (peft adapts pretrained weights)."""
    from hf_cnn_ft.config.sections import ModelArguments
    from hf_cnn_ft.models.build import build_model
    from hf_cnn_ft.models.io import save_model

    model, data_config = build_model(ModelArguments(model="test_resnet", pretrained=False, image_size=32), ["a"])
    save_model(model, data_config, folder)
    return folder


STRATEGIES = {
    "full with a weight average": {"strategy": "full", "ema_decay": 0.9},
    "two_phase with WiSE-FT": {"strategy": "two_phase", "wise_alpha": "auto"},
    "gradual": {"strategy": "gradual"},
    "two_phase with a LoRA adapter": {"strategy": "two_phase", "peft_method": "lora"},
}


@pytest.mark.parametrize("strategy", STRATEGIES, ids=list(STRATEGIES))
def test_a_checkpoint_copied_elsewhere_resumes_to_bit_identical_weights(strategy, shapes_dir, tmp_path):
    settings = {**TINY_SETTINGS, **STRATEGIES[strategy], "dataset": shapes_dir, "num_train_epochs": 5}
    settings.update(early_stopping_patience="null", save_total_limit="null", top_losses=0, correct_per_class=0)
    if "peft_method" in settings:
        settings.update(model=_base_model(tmp_path / "base"), pretrained=True)
    whole = tmp_path / "whole"
    assert main(["train", *overrides({**settings, "output_dir": whole})]) == 0
    # The run's third checkpoint, carried to another machine: nothing else of the run goes with it.
    copied = tmp_path / "elsewhere" / "checkpoint"
    shutil.copytree(checkpoints(whole)[2], copied)
    weights = sorted(p.name for p in whole.glob("*.safetensors"))
    final = {name: load_file(str(whole / name)) for name in weights}
    shutil.rmtree(whole)

    resumed = tmp_path / "resumed"
    argv = ["train", *overrides({**settings, "output_dir": resumed}), "--resume_from_checkpoint", str(copied)]
    assert main(argv) == 0
    for name, tensors in final.items():
        again = load_file(str(resumed / name))
        assert again.keys() == tensors.keys()
        different = [key for key in tensors if not torch.equal(tensors[key], again[key])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
