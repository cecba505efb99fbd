"""An export folder read back: its model file run by its own runtime, behind the interface this tool's
evaluation and prediction use (`model(pixel_values=...).logits`, `model.config.id2label`).

A folder holds `export_report.json` (what was checked), `preprocessing.json` (input size, resize, crop,
mean/std and the labels: everything a runtime needs besides the graph), the model files, and the run's
`recipe.yaml` (so `evaluate` reads the run's own test split)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import ImageClassifierOutput

from hf_cnn_ft.config.paths import EXPORT_REPORT, PREPROCESSING
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.io import FOLDED_TEMPERATURE, LABEL_THRESHOLDS, UNKNOWN_REJECTION
from hf_cnn_ft.share.exports.formats import ExportFormat, Runner
from hf_cnn_ft.share.exports.registry import export_format, format_of_file


class ExportedClassifier(nn.Module):
    """An exported model as a classifier: pixels go through the runtime, logits come back as a tensor."""

    def __init__(self, runner: Runner, preprocessing: dict[str, Any], export: ExportFormat, file: Path):
        super().__init__()
        self.runner, self.export_format, self.file = runner, export, file
        labels = preprocessing["labels"]
        self.config = PretrainedConfig(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
        setattr(self.config, FOLDED_TEMPERATURE, float(preprocessing.get(FOLDED_TEMPERATURE) or 1.0))
        setattr(self.config, UNKNOWN_REJECTION, preprocessing.get(UNKNOWN_REJECTION))
        self.config.problem_type = preprocessing.get("problem_type")  # a multi-label model's, with its thresholds
        setattr(self.config, LABEL_THRESHOLDS, preprocessing.get(LABEL_THRESHOLDS))

    def forward(self, pixel_values: torch.Tensor) -> ImageClassifierOutput:
        pixels = pixel_values.float().contiguous().numpy()
        return ImageClassifierOutput(logits=torch.from_numpy(self.runner(pixels)))


def is_export(path: str | Path) -> bool:
    """An export folder, or a model file inside one."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    return (folder / EXPORT_REPORT).is_file()


def read_export_report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / EXPORT_REPORT).read_text())


def data_config_of(preprocessing: dict[str, Any]) -> DataConfig:
    fields = DataConfig.__dataclass_fields__
    values = {k: v for k, v in preprocessing.items() if k in fields}
    return DataConfig(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})


def load_export(path: str | Path, threads: int | None = None) -> tuple[ExportedClassifier, DataConfig]:
    """The model of an export folder (its float model; the int8 one when `path` names that file), with the
    input it expects, all read from the folder alone."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    report = read_export_report(folder)
    export = export_format(report["format"])
    file = path if path.is_file() else folder / export.model_file()
    if format_of_file(file) is not export:
        raise UserError(f"{file} is not a {export.name} model of {folder}: give the folder or one of its model files")
    export.require()
    preprocessing = json.loads((folder / PREPROCESSING).read_text())
    runner = export.load(file, threads)
    return ExportedClassifier(runner, preprocessing, export, file).eval(), data_config_of(preprocessing)
