"""The export formats: one registry entry per runtime, each with its own package's converter, int8 quantizer
and loader. Every format takes the classifier as a tensor -> logits function and gives back a `Runner`: NCHW
float32 pixels -> logits, for any number of images."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hf_cnn_ft.errors import UserError

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Conversion:
    """What every converter is given: the classifier, example pixels of the input size, and where to write."""

    module: nn.Module
    example: torch.Tensor
    path: Path
    opset: int = 18  # ONNX only


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str  # the model file: model{suffix}; the int8 one: model.int8{suffix}
    install: str  # the pip command that brings its packages
    modules: tuple[str, ...]  # what must import for it to work
    convert: Callable[[Conversion], None]
    # (the conversion of the float model, calibration pixels, a quantization-aware fine-tune or None)
    # -> writes the int8 model at conversion.path
    quantize: Callable[[Conversion, np.ndarray, Callable[[nn.Module], None] | None], None]
    load: Callable[[Path, int | None], Runner]  # (model file, threads or None for the runtime's default)
    batch: str = "dynamic"  # or "1": the runner feeds one image at a time
    qat: bool = True  # its quantizer can fine-tune with the quantizers in the graph (export --qat_epochs)

    def model_file(self, int8: bool = False) -> str:
        return f"model{'.int8' if int8 else ''}{self.suffix}"

    def require(self) -> None:
        """One line naming the install when the format's packages are missing."""
        for name in self.modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise UserError(
                    f"--format {self.name} needs {name}, which does not import here ({exc.name or exc}): {self.install}"
                ) from None


FORMATS: dict[str, ExportFormat] = {}


def register_format(export_format: ExportFormat) -> ExportFormat:
    FORMATS[export_format.name] = export_format
    return export_format


def run_in_batches(run_batch: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, size: int) -> np.ndarray:
    """`run_batch` over `pixels` in chunks of at most `size` images, joined in order."""
    outputs = [run_batch(np.ascontiguousarray(pixels[i : i + size])) for i in range(0, len(pixels), size)]
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)
