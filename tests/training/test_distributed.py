"""`accelerate launch` with two CPU processes (DDP over gloo), checked against one process."""

import json
import subprocess

import pytest
from conftest import TINY_SETTINGS, accelerate_launch, cli_env, overrides

from hf_cnn_ft.evaluation.evaluate import evaluate_model
from hf_cnn_ft.share.run_dir import data_arguments_for

pytestmark = pytest.mark.slow


def test_two_process_run_counts_every_test_image_once(tmp_path, shapes_dir):
    out = tmp_path / "out"
    # 0.12 of 40 images per class -> 5 per class: 15 test images, an odd count that DDP must pad.
    settings = {
        **TINY_SETTINGS,
        "num_train_epochs": 3,
        "dataset": shapes_dir,
        "output_dir": out,
        "test_fraction": 0.12,
        "validation_fraction": 0.12,
        "per_device_eval_batch_size": 4,
        "test_time_flips": "both",  # four gathered predict passes, averaged
    }
    command = accelerate_launch(2, "train", *overrides(settings))
    result = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test results (15 images)") == 1  # only the main process reports

    metrics = json.loads((out / "metrics.json").read_text())
    distributed = metrics["test"]
    assert metrics["processes"] == 2
    assert metrics["split_sizes"]["test"] == 15 and distributed["num_samples"] == 15
    assert sum(map(sum, distributed["confusion_matrix"])) == 15

    single = evaluate_model(out, data_arguments_for(out, None), "test", test_time_flips="both")
    assert single["confusion_matrix"] == distributed["confusion_matrix"]
    assert single["accuracy"] == pytest.approx(distributed["accuracy"])
    alone = evaluate_model(out, data_arguments_for(out, None), "test")
    assert alone["confusion_matrix"] == metrics["without_test_time_augmentation"]["confusion_matrix"]
    assert not (out / ".staging").exists()
