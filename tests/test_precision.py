"""Speed options (bf16 autocast, torch.compile, channels_last) must leave a normal, loadable model;
the CPU process setting that keeps freed memory must stop the page faults it exists to stop."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch
from conftest import TINY_SETTINGS, cli_env, overrides
from safetensors.torch import load_file

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.evaluation.predict import predict_files


def _train_and_predict(tmp_path, shapes_dir, extra: dict) -> tuple[dict, list]:
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "num_train_epochs": 2, "dataset": shapes_dir, "output_dir": out, **extra}
    assert main(["train", *overrides(settings)]) == 0
    weights = load_file(str(out / "model.safetensors"))
    predictions = predict_files(out, sorted(shapes_dir.rglob("*.png"))[:4])
    return weights, predictions


@pytest.mark.parametrize(
    "options",
    [
        {"bf16": True, "channels_last": True},
        pytest.param({"torch_compile": True}, marks=pytest.mark.slow),
    ],
    ids=["bf16-channels_last", "torch_compile"],
)
def test_speed_options_save_a_plain_float32_model_that_predicts(tmp_path, shapes_dir, options):
    weights, predictions = _train_and_predict(tmp_path, shapes_dir, options)
    floats = [t for t in weights.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 and t.is_contiguous() for t in floats)
    assert not any(k.startswith(("_orig_mod", "timm_model.")) for k in weights)  # no compile wrapper names
    for prediction in predictions:  # 3 classes, top-3: the probabilities of all of them
        assert prediction.error is None and sum(prediction.scores) == pytest.approx(1.0, abs=1e-4)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["test"]["num_samples"] > 0


# Allocates and frees a 64 MB tensor ten times, counting the page faults, before and after the setting
# (as a training step does with its activations and gradients).
_FAULT_COUNT = """
import resource, torch
from hf_cnn_ft.cli.process import keep_freed_memory_in_process

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        block = torch.ones(16 * 2**20)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()  # first rounds settle the heap; the counts are of the steady state
default = faults()
applied = keep_freed_memory_in_process()
faults()
print(default, applied, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (Linux)")
def test_kept_freed_memory_is_reused_without_page_faults():
    result = subprocess.run(
        [sys.executable, "-c", _FAULT_COUNT], capture_output=True, text=True, env=cli_env(), check=True
    )
    default, applied, kept = result.stdout.split()
    assert applied == "True"
    pages = 64 * 2**20 // 4096
    assert int(default) >= 9 * pages  # each 64 MB block mapped afresh and faulted in, page by page
    assert int(kept) <= pages  # reused: no page is handed back to the OS and faulted in again
