"""Export for deployment: ONNX with a dynamic batch axis, checked with onnxruntime on real images.

The export directory holds `model.onnx` (input `pixel_values`, NCHW float32, output `logits`),
`preprocessing.json` (resize, crop, interpolation, mean/std and the label names: everything a runtime needs
besides the graph, whose logits are already calibrated) and `export_report.json`.
With `quantize="int8"` it also holds `model.int8.onnx` (static QDQ quantization calibrated on training
images) and the accuracy change it costs on the validation split. Files appear only once their check
passed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import IMAGE_COLUMN, LABEL_COLUMN, split_labels
from hf_cnn_ft.data.inputs import pixel_batches
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import is_timm_model
from hf_cnn_ft.models.io import folded_temperature_of, label_names_of
from hf_cnn_ft.share.atomic import write_json
from hf_cnn_ft.share.run_dir import load_run

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hf-cnn-ft[export]' (onnx, onnxruntime, onnxscript)"
CHECK_IMAGES = 16
CALIBRATION_IMAGES = 64


@dataclass
class ExportResult:
    directory: Path
    onnx_path: Path
    max_abs_diff: float
    checked_images: int
    quantized_path: Path | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # validation accuracy: torch, onnx, int8


class LogitsOnly(nn.Module):
    """The classifier as a plain tensor -> tensor function, the shape an ONNX graph has."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # A timm backbone exports as itself; the transformers wrapper adds only dict plumbing.
        self.timm_model = model.timm_model if is_timm_model(model) else None
        self.model = None if self.timm_model is not None else model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.timm_model is not None:
            return self.timm_model(pixel_values)
        return self.model(pixel_values=pixel_values).logits


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError(f"export needs onnx and onnxruntime: {INSTALL_HINT}") from None


def _export_graph(module: nn.Module, size: int, path: Path, opset: int) -> None:
    common = {"input_names": ["pixel_values"], "output_names": ["logits"], "opset_version": opset}
    example = (torch.randn(2, 3, size, size),)
    try:
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            external_data=False,  # one self-contained file (CNNs are far below ONNX's 2 GB limit)
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            verbose=False,
            **common,
        )
    except Exception as exc:  # torch.export cannot trace every model: the TorchScript exporter can
        logger.info("torch.export could not trace the model (%s); using the TorchScript exporter", type(exc).__name__)
        dynamic_axes = {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(module, example, str(path), dynamo=False, dynamic_axes=dynamic_axes, **common)


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _pixels(dataset: Dataset, data_config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    transform = eval_transform(data_config)
    pixels = np.concatenate([batch.numpy() for batch in pixel_batches(dataset, transform, batch_size=32)])
    return pixels.astype(np.float32), np.asarray(split_labels(dataset))


def _run(session, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate(
        [session.run(None, {"pixel_values": pixels[i : i + batch_size]})[0] for i in range(0, len(pixels), batch_size)]
    )


def _torch_logits(module: nn.Module, pixels: np.ndarray) -> np.ndarray:
    module.eval()
    with torch.inference_mode():
        return module(torch.from_numpy(pixels)).float().numpy()


def _validation_data(model_dir: Path, images: list[Path] | None) -> tuple[Dataset, Dataset]:
    """(calibration images, check images): the run's training and validation splits."""
    from hf_cnn_ft.share.run_dir import data_arguments_for

    if images:
        from datasets import Image as ImageFeature

        dataset = Dataset.from_dict({IMAGE_COLUMN: [str(p) for p in images], LABEL_COLUMN: [-1] * len(images)})
        dataset = dataset.cast_column(IMAGE_COLUMN, ImageFeature())
        return dataset, dataset
    try:
        data_args = data_arguments_for(model_dir, None)
    except UserError:
        raise UserError(f"{model_dir} names no dataset to check the export on: pass --images FILE...") from None
    data = load_image_data(replace(data_args, check_images=False))
    train = data.splits["train"]
    return (train if isinstance(train, Dataset) else data.splits["validation"]), data.splits["validation"]


def _quantize_int8(float_path: Path, output: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixel_values": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(output),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean()) if len(labels) else float("nan")


def export_onnx(
    model_dir: str | Path,
    output_dir: str | Path | None = None,
    opset: int = 18,
    quantize: str | None = None,
    tolerance: float = 1e-3,
    images: list[Path] | None = None,
) -> ExportResult:
    """Exports, then checks the ONNX logits against PyTorch's on real images; fails past `tolerance`."""
    _require_onnx()
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize must be int8, got '{quantize}'")
    model_dir = Path(model_dir)
    output_dir = Path(output_dir) if output_dir else model_dir / "onnx"
    model, data_config = load_run(model_dir)
    module = LogitsOnly(model).eval()
    calibration_set, check_set = _validation_data(model_dir, images)
    check_pixels, check_labels = _pixels(check_set.select(range(min(CHECK_IMAGES, len(check_set)))), data_config)

    output_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = output_dir / "model.onnx"
    pending = output_dir / ".model.onnx.tmp"
    _export_graph(module, data_config.input_size, pending, opset)
    session = _session(pending)
    # Batches of a size the export never saw: the batch axis must really be dynamic.
    difference = float(np.abs(_run(session, check_pixels, 3) - _torch_logits(module, check_pixels)).max())
    if not difference <= tolerance:
        pending.unlink(missing_ok=True)
        raise UserError(
            f"ONNX check failed: max |logit difference| {difference:.3g} on {len(check_pixels)} images exceeds the "
            f"tolerance {tolerance:g}; nothing was written (try another --opset)"
        )
    os.replace(pending, onnx_path)
    labels = label_names_of(model)
    write_json(
        output_dir / "preprocessing.json",
        {
            **dataclasses.asdict(data_config),
            "resize_size": data_config.resize_size,
            "input": "pixel_values, NCHW float32 RGB",
            "labels": labels,
            # Probabilities: softmax(logits). The temperature fitted when the run ended is already folded
            # into the graph's classification layer; it is recorded, not to be applied again.
            "calibration_temperature_folded": folded_temperature_of(model),
        },
    )
    result = ExportResult(output_dir, onnx_path, difference, len(check_pixels))
    if quantize == "int8":
        _add_int8(result, module, session, data_config, calibration_set, check_set if images is None else None)
    write_json(output_dir / "export_report.json", _report(result, opset, tolerance))
    return result


def _add_int8(
    result: ExportResult,
    module: nn.Module,
    session,
    data_config: DataConfig,
    calibration_set: Dataset,
    labelled: Dataset | None,
) -> None:
    """Writes the statically quantized model beside the float one; on labelled validation images, also
    records what quantization costs in accuracy."""
    calibration = calibration_set.shuffle(seed=0).select(range(min(CALIBRATION_IMAGES, len(calibration_set))))
    calibration_pixels, _ = _pixels(calibration, data_config)
    quantized = result.directory / "model.int8.onnx"
    pending = result.directory / ".model.int8.onnx.tmp"
    _quantize_int8(result.onnx_path, pending, calibration_pixels)
    os.replace(pending, quantized)
    result.quantized_path = quantized
    if labelled is not None:
        pixels, labels = _pixels(labelled, data_config)
        result.accuracy = {
            "torch": _accuracy(_torch_logits(module, pixels), labels),
            "onnx": _accuracy(_run(session, pixels), labels),
            "int8": _accuracy(_run(_session(quantized), pixels), labels),
        }


def _report(result: ExportResult, opset: int, tolerance: float) -> dict[str, Any]:
    return {
        "opset": opset,
        "max_abs_logit_difference": result.max_abs_diff,
        "tolerance": tolerance,
        "checked_images": result.checked_images,
        "int8": str(result.quantized_path.name) if result.quantized_path else None,
        "validation_accuracy": result.accuracy,
    }
