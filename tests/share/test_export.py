"""Exports to ONNX, OpenVINO, ExecuTorch and LiteRT: each checked with its own runtime, read back from its
folder alone, and run by `predict` and `evaluate`; int8 and what it costs; failures leave nothing behind."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import REPO_ROOT, cli_env
from transformers import ResNetConfig, ResNetForImageClassification

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.sections import ModelArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.predict import predict_files
from hf_cnn_ft.evaluation.rejection import Rejection
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.models.io import save_model
from hf_cnn_ft.share.exports import exporting
from hf_cnn_ft.share.exports.exported import load_export
from hf_cnn_ft.share.exports.exporting import export_model
from hf_cnn_ft.share.exports.registry import export_format as format_named

LABELS = ["cat", "dog", "fox"]
# LiteRT's converter lives in an environment of its own (`make litert`); `make test` names its Python here.
LITERT_PYTHON = os.environ.get("HF_CNN_FT_LITERT_PYTHON")


def _model_dir(root: Path, family: str) -> Path:
    directory = root / family
    if family == "transformers-resnet":
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
        model = ResNetForImageClassification(config)
        model.config.id2label = dict(enumerate(LABELS))
        model.config.label2id = {name: i for i, name in enumerate(LABELS)}
        data_config = DataConfig(input_size=32)
    else:
        model, data_config = build_model(
            ModelArguments(model=family, pretrained=False, image_size=32, zero_init_head=False), LABELS
        )
    for module in model.modules():  # non-trivial BatchNorm statistics, as a trained model has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    save_model(model, data_config, directory)
    return directory


@pytest.fixture(scope="module")
def images(shapes_dir) -> list[Path]:
    return sorted(shapes_dir.rglob("*.png"))[::10][:7]


def _cli(python: str | None, *args: str) -> subprocess.CompletedProcess:
    """The command line in this process (python None), or in a process of `python`'s environment."""
    if python is None:
        return subprocess.CompletedProcess(args, main(list(args)), "", "")
    command = [python, "-c", "import sys; from hf_cnn_ft.cli.main import main; sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(command, capture_output=True, text=True, env=cli_env(), cwd=REPO_ROOT, timeout=900)


def _format_python(export_format: str) -> str | None:
    """Where a format's runtime runs: onnxruntime in the test process; OpenVINO and ExecuTorch, whose native
    libraries stay loaded for the rest of a process, in a process of their own; LiteRT in its environment."""
    if export_format == "onnx":
        return None
    if export_format != "litert":
        return sys.executable
    if not LITERT_PYTHON:
        pytest.skip("LiteRT's environment is not built: `make litert` (make test builds it)")
    return LITERT_PYTHON


@pytest.mark.parametrize(
    "family", ["test_resnet", "test_efficientnet", "test_convnext", "mobilenetv3_small_050", "transformers-resnet"]
)
@pytest.mark.slow
def test_export_of_each_family_passes_the_onnxruntime_check(tmp_path, family, images):
    result = export_model(_model_dir(tmp_path, family), tmp_path / "onnx", images=images)
    assert result.max_abs_diff <= 1e-3 and result.checked_images == len(images) and result.agreement == 1.0
    session = onnxruntime.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch axis is dynamic
        logits = session.run(None, {"pixel_values": np.zeros((batch, 3, 32, 32), np.float32)})[0]
        assert logits.shape == (batch, 3)
    preprocessing = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert preprocessing["labels"] == LABELS and preprocessing["input_size"] == 32
    assert {"mean", "std", "interpolation", "crop_pct", "resize_size"} <= preprocessing.keys()


@pytest.mark.parametrize("export_format", ["onnx", "openvino", "executorch", "litert"])
@pytest.mark.slow
def test_each_format_matches_pytorch_and_predicts_from_its_folder_alone(tmp_path, export_format, images):
    python = _format_python(export_format)
    model_dir = _model_dir(tmp_path, "mobilenetv3_small_050")
    # An "unknown" threshold between the images' top probabilities: the export must answer as the run does.
    tops = sorted(p.scores[0] for p in predict_files(model_dir, images, top_k=1))
    gap = max(range(1, len(tops) - 2), key=lambda i: tops[i + 1] - tops[i])  # far from every image's score
    middle = (tops[gap] + tops[gap + 1]) / 2
    config = json.loads((model_dir / "config.json").read_text())
    config["unknown_rejection"] = dataclasses.asdict(Rejection("msp", middle, 0.05, 0.05, 100))
    (model_dir / "config.json").write_text(json.dumps(config))
    folder = tmp_path / "export"
    image_args = ["--images", *map(str, images)]
    done = _cli(
        python,
        "export",
        str(model_dir),
        "--format",
        export_format,
        "--quantize",
        "int8",
        "--output",
        str(folder),
        *image_args,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((folder / "export_report.json").read_text())
    assert report["format"] == export_format and report["max_abs_logit_difference"] <= 1e-3
    assert report["top_class_agreement"] == 1.0 and report["checked_images"] == len(images)
    assert report["int8"] and all(size > 0 for size in report["files"].values())

    shipped = tmp_path / "shipped" / "export"  # the folder alone, moved away from the run
    shutil.copytree(folder, shipped)
    shutil.rmtree(folder)
    on_run = predict_files(model_dir, images, top_k=3)
    output = tmp_path / "predictions.json"
    done = _cli(python, "predict", str(shipped), *map(str, images), "--output", str(output))
    assert done.returncode == 0, done.stderr
    on_export = json.loads(output.read_text())
    for run_prediction, exported in zip(on_run, on_export, strict=True):
        assert [p["label"] for p in exported["predictions"]] == run_prediction.labels
        np.testing.assert_allclose([p["score"] for p in exported["predictions"]], run_prediction.scores, atol=1e-4)
        assert exported["answer"] == run_prediction.answer
    assert {p.answer for p in on_run} > {"unknown"}  # some images answered with a class, some unknown
    preprocessing = json.loads((shipped / "preprocessing.json").read_text())
    assert preprocessing["labels"] == LABELS and preprocessing["input_size"] == 32
    int8_output = tmp_path / "int8.json"
    int8_file = shipped / report["int8"]
    done = _cli(python, "predict", str(int8_file), *map(str, images), "--output", str(int8_output))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(int8_output.read_text())) == len(images)


@pytest.mark.slow
def test_evaluate_on_an_export_reads_the_runs_test_split_with_the_runtime(trained_run, tmp_path):
    folder, python = tmp_path / "openvino", _format_python("openvino")
    done = _cli(
        python, "export", str(trained_run), "--format", "openvino", "--quantize", "int8", "--output", str(folder)
    )
    assert done.returncode == 0, done.stderr
    assert "top class agrees on 100%" in done.stdout and "int8" in done.stdout
    report = json.loads((folder / "export_report.json").read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    accuracy = report["validation_accuracy"]
    assert accuracy["torch"] == pytest.approx(metrics["best_validation"]["accuracy"])
    assert accuracy["export"] == pytest.approx(accuracy["torch"]) and 0.0 <= accuracy["int8"] <= 1.0
    assert report["int8_drop_points"] == pytest.approx(100 * (accuracy["export"] - accuracy["int8"]), abs=0.01)
    assert report["calibration_images"] == metrics["split_sizes"]["train"]  # a small training split: all of it

    results = {}
    for name, source in {"run": trained_run, "export": folder, "int8": folder / "model.int8.xml"}.items():
        output = tmp_path / f"{name}.json"
        done = _cli(python, "evaluate", str(source), "--output", str(output))
        assert done.returncode == 0, done.stderr
        results[name] = json.loads(output.read_text())
    assert results["export"]["num_samples"] == results["run"]["num_samples"] == metrics["test"]["num_samples"]
    assert results["export"]["accuracy"] == pytest.approx(results["run"]["accuracy"])
    assert abs(results["int8"]["accuracy"] - results["run"]["accuracy"]) <= 0.1


@pytest.mark.slow
def test_int8_past_max_drop_fails_and_the_older_export_stays_whole(trained_run, tmp_path, capsys):
    folder = tmp_path / "onnx"
    assert main(["export", str(trained_run), "--output", str(folder)]) == 0
    before = sorted(p.name for p in folder.iterdir())
    code = main(["export", str(trained_run), "--output", str(folder), "--quantize", "int8", "--max_drop", "-100"])
    assert code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "int8 costs" in line]
    assert len(error) == 1 and "more than --max_drop -100: nothing was written" in error[0]
    assert sorted(p.name for p in folder.iterdir()) == before and "model.int8.onnx" not in before
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no partial folder beside it


class Spectral(torch.nn.Module):
    """A layer no ONNX opset can express (a singular value decomposition)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.linalg.svdvals(x).mean()


@pytest.mark.slow
def test_a_layer_the_converter_cannot_take_is_named_and_nothing_is_left(tmp_path, images, monkeypatch):
    model_dir = _model_dir(tmp_path, "test_resnet")
    load_run = exporting.load_run

    def with_spectral_layer(directory):
        model, data_config = load_run(directory)
        model.timm_model.act1 = torch.nn.Sequential(model.timm_model.act1, Spectral())
        return model, data_config

    monkeypatch.setattr(exporting, "load_run", with_spectral_layer)
    with pytest.raises(UserError, match=r"onnx conversion failed at layer timm_model\.act1\.1 \(Spectral\)"):
        export_model(model_dir, tmp_path / "onnx", images=images)
    assert not (tmp_path / "onnx").exists() and not list(tmp_path.glob(".onnx*"))


@pytest.mark.slow
def test_a_tolerance_the_export_cannot_meet_fails_and_leaves_no_model(tmp_path, images):
    model_dir = _model_dir(tmp_path, "test_efficientnet")
    with pytest.raises(UserError, match="onnx check failed: max |logit difference|"):
        export_model(model_dir, tmp_path / "onnx", tolerance=-1.0, images=images)
    assert not (tmp_path / "onnx").exists() and not list(tmp_path.glob(".onnx*"))


def test_an_unknown_format_is_one_line_listing_the_known_ones(trained_run, capsys):
    assert main(["export", str(trained_run), "--format", "coreml"]) == 2
    error = capsys.readouterr().err
    assert "unknown export format 'coreml'" in error and error.count("\n") == 1
    assert all(name in error for name in ("onnx", "openvino", "executorch", "litert"))


def test_an_export_folder_holding_other_files_is_refused_before_any_work(trained_run, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["export", str(trained_run), "--output", str(tmp_path)]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_missing_model_directory_is_one_clear_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert f"model directory {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_an_export_loads_from_its_folder_without_the_run(tmp_path, images):
    model_dir = _model_dir(tmp_path, "test_resnet")
    export_model(model_dir, tmp_path / "onnx", images=images)
    shutil.rmtree(model_dir)
    model, data_config = load_export(tmp_path / "onnx")
    assert data_config.input_size == 32 and model.config.id2label == dict(enumerate(LABELS))
    logits = model(pixel_values=torch.zeros(2, 3, 32, 32)).logits
    assert logits.shape == (2, 3) and logits.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["openvino", "executorch", "litert"])
def test_quantization_aware_training_moves_the_int8_weights_and_is_recorded(trained_run, tmp_path, export_format):
    # The run is a ResNet: PT2E's QAT path once met its BatchNorm scales with NaN ("zero_point must be between...").
    after, aware, python = tmp_path / "after", tmp_path / "aware", _format_python(export_format)
    common = ["export", str(trained_run), "--format", export_format, "--quantize", "int8"]
    assert _cli(python, *common, "--output", str(after)).returncode == 0
    done = _cli(python, *common, "--qat_epochs", "2", "--output", str(aware))
    assert done.returncode == 0, done.stderr
    assert "quantization-aware training, epoch 2 of 2" in done.stderr
    report = json.loads((aware / "export_report.json").read_text())
    assert report["qat_epochs"] == 2 and json.loads((after / "export_report.json").read_text())["qat_epochs"] == 0
    assert 0.0 <= report["validation_accuracy"]["int8"] <= 1.0
    weights = {"openvino": ".bin"}.get(export_format)  # OpenVINO keeps the weights beside its graph file
    int8, float32 = (Path(format_named(export_format).model_file(q)) for q in (True, False))
    int8, float32 = (name.with_suffix(weights) if weights else name for name in (int8, float32))
    assert (aware / int8).read_bytes() != (after / int8).read_bytes()
    assert (aware / float32).read_bytes() == (after / float32).read_bytes()  # the float model untouched


def test_quantization_aware_training_where_the_format_cannot_is_one_line(trained_run, tmp_path, capsys):
    code = main(
        ["export", str(trained_run), "--quantize", "int8", "--qat_epochs", "1", "--output", str(tmp_path / "x")]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "onnx quantizes after training only; quantization-aware: executorch, litert, openvino" in error
    assert not (tmp_path / "x").exists()
