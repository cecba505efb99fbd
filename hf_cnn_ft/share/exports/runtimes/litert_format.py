"""LiteRT (TensorFlow Lite, .tflite), converted by litert-torch and run with LiteRT's interpreter (XNNPACK
on CPUs); int8 by PT2E static quantization with litert-torch's quantizer. The model takes one image at a time,
as phone apps feed it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hf_cnn_ft.share.exports.formats import Conversion, ExportFormat, Runner, register_format, run_in_batches
from hf_cnn_ft.share.exports.qat import FineTune, pt2e_int8


def convert(conversion: Conversion) -> None:
    import litert_torch

    litert_torch.convert(conversion.module.eval(), (conversion.example[:1],)).export(str(conversion.path))


def quantize(conversion: Conversion, calibration: np.ndarray, fine_tune: FineTune | None = None) -> None:
    """litert-torch's symmetric int8 (per-channel weights), after training or, with `fine_tune`,
    quantization-aware."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    example = conversion.example[:1]

    class FoldedBatchNormQuantizer(PT2EQuantizer):
        # pt2e_int8 folds BatchNorm before annotating, so the QAT-only conv-BN patterns have nothing to match; and
        # litert-torch builds them with an argument torchao's pattern export no longer takes (a function).
        STATIC_QAT_ONLY_OPS = []

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=fine_tune is not None)
    quantizer = FoldedBatchNormQuantizer().set_global(config)
    quantized = pt2e_int8(conversion.module, conversion.example, quantizer, calibration, False, fine_tune)
    litert_torch.convert(quantized, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
        str(conversion.path)
    )


def _to_tensor(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float pixels as the model's input tensor: quantized with its scale and zero point where it is integer."""
    if np.issubdtype(detail["dtype"], np.floating):
        return values.astype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    limits = np.iinfo(detail["dtype"])
    return np.clip(np.round(values / scale + zero_point), limits.min, limits.max).astype(detail["dtype"])


def _from_tensor(values: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(detail["dtype"], np.floating):
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


def load(path: Path, threads: int | None = None) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run_one(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], _to_tensor(image, source))
        interpreter.invoke()
        return _from_tensor(interpreter.get_tensor(target["index"]), target)

    return lambda pixels: run_in_batches(run_one, pixels, 1)


FORMAT = register_format(
    ExportFormat(
        name="litert",
        suffix=".tflite",
        install="pip install 'hf-cnn-ft[litert]' (litert-torch; in an environment of its own: see the README)",
        modules=("litert_torch", "ai_edge_litert.interpreter"),
        convert=convert,
        quantize=quantize,
        load=load,
        batch="1",
    )
)
