"""ExecuTorch (.pte), lowered to the XNNPACK backend that phones and edge CPUs run; int8 by PT2E static
quantization with XNNPACK's quantizer. The batch axis is dynamic up to MAX_BATCH images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hf_cnn_ft.share.exports.formats import Conversion, ExportFormat, Runner, register_format, run_in_batches
from hf_cnn_ft.share.exports.qat import FineTune, pt2e_int8

MAX_BATCH = 8  # the runtime refused inputs of 16 images and more with the batch axis declared up to 64


def _lower(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    path.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)


def convert(conversion: Conversion) -> None:
    _lower(conversion.module, conversion.example, conversion.path)


def quantize(conversion: Conversion, calibration: np.ndarray, fine_tune: FineTune | None = None) -> None:
    """XNNPACK's symmetric int8 (per-channel weights), after training or, with `fine_tune`, quantization-aware."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=fine_tune is not None)
    quantizer = XNNPACKQuantizer().set_global(config)
    quantized = pt2e_int8(conversion.module, conversion.example, quantizer, calibration, fine_tune=fine_tune)
    _lower(quantized, conversion.example, conversion.path)


def load(path: Path, threads: int | None = None) -> Runner:
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if threads:
        portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda pixels: run_in_batches(
        lambda batch: method.execute([torch.from_numpy(batch)])[0].numpy(), pixels, MAX_BATCH
    )


FORMAT = register_format(
    ExportFormat(
        name="executorch",
        suffix=".pte",
        install="pip install 'hf-cnn-ft[executorch]' (executorch)",
        modules=("executorch.exir", "executorch.runtime"),
        convert=convert,
        quantize=quantize,
        load=load,
    )
)
