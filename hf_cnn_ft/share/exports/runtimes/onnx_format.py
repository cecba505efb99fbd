"""ONNX, run with onnxruntime: a dynamic batch axis; int8 by onnxruntime's static QDQ quantization."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from hf_cnn_ft.share.exports.formats import Conversion, ExportFormat, Runner, register_format, run_in_batches

logger = logging.getLogger(__name__)


def convert(conversion: Conversion) -> None:
    common = {"input_names": ["pixel_values"], "output_names": ["logits"], "opset_version": conversion.opset}
    example = (conversion.example,)
    try:
        torch.onnx.export(
            conversion.module,
            example,
            str(conversion.path),
            dynamo=True,
            external_data=False,  # one self-contained file (CNNs are far below ONNX's 2 GB limit)
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            verbose=False,
            **common,
        )
    except Exception as exc:  # torch.export cannot trace every model: the TorchScript exporter can
        logger.info("torch.export could not trace the model (%s); using the TorchScript exporter", type(exc).__name__)
        dynamic_axes = {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(
            conversion.module, example, str(conversion.path), dynamo=False, dynamic_axes=dynamic_axes, **common
        )


def quantize(conversion: Conversion, calibration: np.ndarray, fine_tune: None = None) -> None:
    """Static QDQ int8 (per-channel weights) of the float model beside it, calibrated on `calibration` (after
    training only: qat False)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixel_values": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    float_model = conversion.path.with_name(FORMAT.model_file())  # written and checked before int8 is asked for
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(conversion.path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )


def load(path: Path, threads: int | None = None) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda pixels: run_in_batches(lambda batch: session.run(None, {"pixel_values": batch})[0], pixels, 64)


FORMAT = register_format(
    ExportFormat(
        name="onnx",
        suffix=".onnx",
        install="pip install 'hf-cnn-ft[export]' (onnx, onnxruntime, onnxscript)",
        modules=("onnx", "onnxruntime", "onnxscript"),
        convert=convert,
        quantize=quantize,
        load=load,
        qat=False,
    )
)
