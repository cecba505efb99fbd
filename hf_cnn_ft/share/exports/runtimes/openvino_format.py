"""OpenVINO IR (model.xml + model.bin), run with OpenVINO's CPU plugin; int8 by NNCF's post-training
quantization. Inference runs in float32: on CPUs with AMX the plugin would otherwise pick bfloat16 and give other
logits than the model checked here."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from hf_cnn_ft.share.exports.formats import Conversion, ExportFormat, Runner, register_format, run_in_batches
from hf_cnn_ft.share.exports.qat import FineTune


def _read(conversion: Conversion):
    import openvino

    size = conversion.example.shape[-1]
    return openvino.convert_model(conversion.module, example_input=conversion.example, input=[(-1, 3, size, size)])


def convert(conversion: Conversion) -> None:
    import openvino

    openvino.save_model(_read(conversion), str(conversion.path), compress_to_fp16=False)


def quantize(conversion: Conversion, calibration: np.ndarray, fine_tune: FineTune | None = None) -> None:
    """NNCF's post-training int8 on the OpenVINO model; with `fine_tune`, NNCF's int8 on the PyTorch model,
    fine-tuned with its quantizers in place, then converted."""
    import nncf
    import openvino

    if fine_tune is None:
        dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
        quantized = nncf.quantize(_read(conversion), dataset, subset_size=len(calibration))
    else:
        dataset = nncf.Dataset([torch.from_numpy(calibration[i : i + 1]) for i in range(len(calibration))])
        module = nncf.quantize(copy.deepcopy(conversion.module).eval(), dataset, subset_size=len(calibration))
        fine_tune(module)
        quantized = _read(Conversion(module.eval(), conversion.example, conversion.path))
    openvino.save_model(quantized, str(conversion.path))


def load(path: Path, threads: int | None = None) -> Runner:
    import openvino

    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    return lambda pixels: run_in_batches(lambda batch: compiled(batch)[0], pixels, 64)


FORMAT = register_format(
    ExportFormat(
        name="openvino",
        suffix=".xml",
        install="pip install 'hf-cnn-ft[openvino]' (openvino, nncf)",
        modules=("openvino", "nncf"),
        convert=convert,
        quantize=quantize,
        load=load,
    )
)
