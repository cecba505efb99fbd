"""When a runtime's converter fails: which layer it cannot take, found by converting one layer of each kind
alone, with the input it sees in the model."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hf_cnn_ft.errors import UserError, first_line
from hf_cnn_ft.share.exports.formats import Conversion, ExportFormat


def _first_of_each_kind(module: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, layer, its input) for the first leaf layer of each type, in the order the model runs them."""
    seen: dict[type, tuple[str, nn.Module, torch.Tensor]] = {}
    names = {layer: name for name, layer in module.named_modules()}

    def record(layer: nn.Module, inputs: tuple, _output) -> None:
        if type(layer) not in seen and inputs and isinstance(inputs[0], torch.Tensor):
            seen[type(layer)] = (names[layer], layer, inputs[0].detach())

    leaves = [layer for layer in module.modules() if not list(layer.children())]
    hooks = [layer.register_forward_hook(record) for layer in leaves]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    return list(seen.values())


def failing_layer(export: ExportFormat, module: nn.Module, example: torch.Tensor) -> str | None:
    """'name (Type)' of the first layer the converter refuses on its own, or None if each converts alone."""
    with tempfile.TemporaryDirectory() as scratch:
        for name, layer, inputs in _first_of_each_kind(module, example):
            try:
                export.convert(Conversion(layer, inputs, Path(scratch) / export.model_file()))
            except Exception:
                return f"{name} ({type(layer).__name__})"
    return None


def converted(export: ExportFormat, conversion: Conversion, convert: Callable[[Conversion], None]) -> None:
    """`convert(conversion)`; a converter's failure becomes one line naming the layer it cannot take."""
    try:
        convert(conversion)
    except UserError:
        raise
    except Exception as exc:
        layer = failing_layer(export, conversion.module, conversion.example)
        where = f"at layer {layer}" if layer else "(each layer converts alone: the failure is in how they connect)"
        raise UserError(
            f"{export.name} conversion failed {where}: {first_line(exc)}; nothing was written. Other formats: "
            "`hf-cnn-ft export --format ...`"
        ) from None
