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
from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.evaluation.predict import predict_files
from hf_cnn_ft.models.precision import auto_candidates, native_precisions


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
        {"precision": "bf16", "channels_last": True},
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
from hf_cnn_ft.training.machine import keep_freed_memory_in_process

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
@pytest.mark.slow
def test_kept_freed_memory_is_reused_without_page_faults():
    result = subprocess.run(
        [sys.executable, "-c", _FAULT_COUNT], capture_output=True, text=True, env=cli_env(), check=True
    )
    default, applied, kept = result.stdout.split()
    assert applied == "True"
    pages = 64 * 2**20 // 4096
    assert int(default) >= 9 * pages  # each 64 MB block mapped afresh and faulted in, page by page
    assert int(kept) <= pages  # reused: no page is handed back to the OS and faulted in again


@pytest.mark.slow
def test_auto_settles_to_a_precision_the_saved_recipe_reproduces_and_the_next_run_reads_from_cache(
    tmp_path, shapes_dir, monkeypatch
):
    monkeypatch.setenv("HF_CNN_FT_CACHE", str(tmp_path / "cache"))
    chosen = []
    for run in ("first", "second"):
        out = tmp_path / run
        settings = {**TINY_SETTINGS, "precision": "auto", "dataset": shapes_dir, "output_dir": out}
        assert main(["train", *overrides({**settings, "num_train_epochs": 1})]) == 0
        summary = json.loads((out / "metrics.json").read_text())["precision"]
        saved = load_recipe(out / "recipe.yaml").training
        assert summary["precision"] in auto_candidates() and saved.precision == summary["precision"]
        assert saved.bf16 == (summary["precision"] == "bf16")
        assert (out / "README.md").read_text().count("fastest of a timed train step") == 1
        chosen.append(summary)
    assert not chosen[0]["cached"] and chosen[0]["probe_seconds"] > 0
    assert chosen[1]["cached"] and chosen[1]["probe_seconds"] == 0 and chosen[1]["precision"] == chosen[0]["precision"]
    assert set(chosen[0]["seconds_per_step"]) == set(auto_candidates())


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"precision": "fp16"}, "fp16 needs a CUDA GPU"),
        ({"fp16": True, "precision": "auto"}, "fp16 needs a CUDA GPU"),
        ({"bf16": True, "precision": "fp32"}, "training.precision: fp32 contradicts training.bf16"),
        ({"precision": "fp8"}, "training.precision: 'fp8' is not one of auto, fp32, bf16, fp16"),
    ],
)
def test_a_precision_this_machine_cannot_run_is_one_line(tmp_path, shapes_dir, capsys, settings, says):
    if torch.cuda.is_available() and "fp16" in str(settings):
        pytest.skip("a CUDA machine runs float16")
    argv = ["train", *overrides({**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": tmp_path / "o", **settings})]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and says in error[0], error


@pytest.mark.skipif("bf16" not in native_precisions(), reason="this CPU has no fast bfloat16")
@pytest.mark.slow
def test_a_bfloat16_run_saves_float32_weights_that_pipeline_and_timm_load_with_its_labels(tmp_path, shapes_dir):
    import timm
    from PIL import Image
    from transformers import pipeline

    weights, predictions = _train_and_predict(tmp_path, shapes_dir, {"precision": "bf16"})
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
    out = tmp_path / "out"
    images = sorted(shapes_dir.rglob("*.png"))[:4]  # the images _train_and_predict predicted
    classifier = pipeline("image-classification", model=str(out))
    with_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=with_timm))
    names = json.loads((out / "metrics.json").read_text())["label_names"]
    # bfloat16 rounds the logits to about 3 digits: where two classes are closer than that, either may win.
    clear = [(image, ours) for image, ours in zip(images, predictions) if ours.scores[0] - ours.scores[1] > 0.02]
    assert clear, "no image the model is clear about"
    for image, ours in clear:
        picture = Image.open(image).convert("RGB")
        assert classifier(picture, top_k=1)[0]["label"] == ours.labels[0]
        with torch.no_grad():
            assert names[int(with_timm(transform(picture)[None]).argmax())] == ours.labels[0]


@pytest.mark.parametrize(
    "native, timed",
    [
        (["fp32", "bf16", "fp16"], ["fp32", "bf16"]),  # a GPU with bfloat16: float16's loss scaler is left out
        (["fp32", "fp16"], ["fp32", "fp16"]),  # a GPU without bfloat16
        (["fp32", "bf16"], ["fp32", "bf16"]),  # a CPU with AVX-512 BF16 / AMX
    ],
)
def test_auto_times_float32_and_one_lower_precision(monkeypatch, native, timed):
    import hf_cnn_ft.models.precision as precision

    monkeypatch.setattr(precision, "native_precisions", lambda device=None: native)
    assert precision.auto_candidates("cuda") == timed


def test_a_lower_precision_is_chosen_only_when_clearly_faster_and_a_gpu_probes_at_the_runs_batch():
    from hf_cnn_ft.models.precision import REQUIRED_SPEEDUP, _preferred, probe_batch

    assert _preferred({"fp32": 1.0, "bf16": 1.0 / (REQUIRED_SPEEDUP + 0.01)}) == "bf16"
    assert _preferred({"fp32": 1.0, "bf16": 1.0 / (REQUIRED_SPEEDUP - 0.05)}) == "fp32"
    assert _preferred({"fp32": 1.0, "fp16": 0.5}) == "fp16"
    assert probe_batch("train", 48, "cuda") == 48 and probe_batch("train", 48, "cpu") < 48
    assert probe_batch("train", 4096, "cuda") < 4096  # bounded: the probe must not run out of memory first


class _WarmingUp(torch.nn.Module):
    """Steps that take the scripted seconds, one after another (as float32 kernels warm up over several steps)."""

    def __init__(self, seconds: list[float]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.seconds = iter(seconds)

    def forward(self, pixel_values):
        import time
        from types import SimpleNamespace

        time.sleep(next(self.seconds))
        return SimpleNamespace(logits=self.weight * pixel_values.mean(dim=(1, 2, 3))[:, None])


def test_the_probe_times_a_precision_once_its_warm_up_has_settled():
    from hf_cnn_ft.models.precision import _seconds_per_step

    # Slow first steps, then steady at 0.05 s: the timed steps are the steady ones, not the second or third.
    warming = _WarmingUp([0.40, 0.20, 0.10, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    assert _seconds_per_step(warming, "fp32", 8, 2, train=True, channels_last=False) < 0.08
    assert len(list(warming.seconds)) == 2  # stopped warming once settled: 5 warm-up steps, 2 timed

    # Steady from the start: one warm-up step past the first, then the timed ones.
    steady = _WarmingUp([0.05] * 8)
    _seconds_per_step(steady, "fp32", 8, 2, train=True, channels_last=False)
    assert len(list(steady.seconds)) == 4
