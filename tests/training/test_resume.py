"""Crash safety: a run killed with SIGKILL resumes from its last complete checkpoint and finishes."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_SETTINGS, cli_env, overrides

from hf_cnn_ft.config.checkpoints import is_complete_checkpoint

pytestmark = pytest.mark.slow


def test_killed_run_resumes_with_one_flag_and_finishes(tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {
        **TINY_SETTINGS,
        "num_train_epochs": 40,
        "dataset": shapes_dir,
        "output_dir": out,
        "early_stopping_patience": "null",
        "save_total_limit": 3,
    }
    command = [sys.executable, "-m", "hf_cnn_ft", "train", *overrides(settings)]
    process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(is_complete_checkpoint(p) for p in out.glob("checkpoint-*")):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.3)  # into the next epoch
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (out / "metrics.json").exists(), "a killed run must not look complete"
    # A checkpoint cut short by a crash (no trainer state) must not be picked up.
    (out / "checkpoint-999999").mkdir()
    (out / "checkpoint-999999" / "model.safetensors").write_bytes(b"partial")

    resumed = subprocess.run([*command, "--resume"], env=cli_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert not (out / "checkpoint-999999").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 40
    final_state = json.loads(
        sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
        .joinpath("trainer_state.json")
        .read_text()
    )
    assert final_state["global_step"] == 40 * (
        metrics["split_sizes"]["train"] // TINY_SETTINGS["per_device_train_batch_size"]
    )
