"""ONNX export, checked with onnxruntime; int8 quantization and what it costs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.sections import ModelArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.models.io import save_model
from hf_cnn_ft.share.export import export_onnx

LABELS = ["cat", "dog", "fox"]


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


@pytest.mark.parametrize(
    "family", ["test_resnet", "test_efficientnet", "test_convnext", "mobilenetv3_small_050", "transformers-resnet"]
)
@pytest.mark.slow
def test_export_of_each_family_passes_the_onnxruntime_check(tmp_path, family, images):
    result = export_onnx(_model_dir(tmp_path, family), tmp_path / "onnx", images=images)
    assert result.max_abs_diff <= 1e-3 and result.checked_images == len(images)
    session = onnxruntime.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch axis is dynamic
        logits = session.run(None, {"pixel_values": np.zeros((batch, 3, 32, 32), np.float32)})[0]
        assert logits.shape == (batch, 3)
    preprocessing = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert preprocessing["labels"] == LABELS and preprocessing["input_size"] == 32
    assert {"mean", "std", "interpolation", "crop_pct", "resize_size"} <= preprocessing.keys()


@pytest.mark.slow
def test_a_tolerance_the_export_cannot_meet_fails_and_leaves_no_model(tmp_path, images):
    model_dir = _model_dir(tmp_path, "test_efficientnet")
    with pytest.raises(UserError, match="ONNX check failed: max |logit difference|"):
        export_onnx(model_dir, tmp_path / "onnx", tolerance=-1.0, images=images)
    assert not list((tmp_path / "onnx").glob("*.onnx")) and not list((tmp_path / "onnx").glob(".*tmp"))


@pytest.mark.slow
def test_export_command_with_int8_reports_the_accuracy_change(trained_run, tmp_path, capsys):
    output = tmp_path / "onnx"
    assert main(["export", str(trained_run), "--output", str(output), "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "max |logit difference|" in printed and "int8" in printed
    report = json.loads((output / "export_report.json").read_text())
    accuracy = report["validation_accuracy"]
    assert (output / "model.int8.onnx").is_file() and report["int8"] == "model.int8.onnx"
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert accuracy["torch"] == pytest.approx(metrics["best_validation"]["accuracy"])
    assert accuracy["onnx"] == pytest.approx(accuracy["torch"])
    assert 0.0 <= accuracy["int8"] <= 1.0


def test_a_missing_model_directory_is_one_clear_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert f"model directory {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
