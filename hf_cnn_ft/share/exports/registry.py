"""The export formats by name: every runtime module registered (importing `runtimes` does it), then looked up."""

from __future__ import annotations

from pathlib import Path

from hf_cnn_ft.errors import UserError
from hf_cnn_ft.share.exports import runtimes  # noqa: F401  (registers every format)
from hf_cnn_ft.share.exports.formats import FORMATS, ExportFormat


def export_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UserError(f"unknown export format '{name}': use one of {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of_file(path: Path) -> ExportFormat | None:
    """The format whose model file `path` is (model.onnx, model.int8.xml...), if any."""
    return next((f for f in FORMATS.values() if path.name in (f.model_file(), f.model_file(int8=True))), None)
