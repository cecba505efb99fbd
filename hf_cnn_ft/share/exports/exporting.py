"""Export for deployment: the run's classifier converted by the chosen runtime's own tools, then checked
against PyTorch on real images before anything is kept.

The export folder (default MODEL_DIR/FORMAT) holds the model file (`model.onnx`, `model.xml` + `.bin`,
`model.pte` or `model.tflite`; input `pixel_values`, NCHW float32, output `logits`), `preprocessing.json`,
the run's `recipe.yaml` and `export_report.json`. With `quantize="int8"` it also holds `model.int8.*`
(static quantization calibrated on training images) and what it costs in accuracy on the validation split.
The folder is filled beside its place and moved there only once every check passed: a failed export leaves
nothing behind, and an older export stays whole until the new one replaces it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn

from hf_cnn_ft.config.paths import EXPORT_REPORT, PREPROCESSING
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import IMAGE_COLUMN, LABEL_COLUMN, is_multi_label, split_labels, targets_of
from hf_cnn_ft.data.inputs import pixel_batches
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import is_timm_model
from hf_cnn_ft.models.decisions import per_image_correct
from hf_cnn_ft.models.io import (
    LABEL_THRESHOLDS,
    MULTI_LABEL,
    UNKNOWN_REJECTION,
    folded_temperature_of,
    is_multi_label_model,
    label_names_of,
    label_thresholds,
)
from hf_cnn_ft.share.atomic import replace_folder, staging_folder_for, write_json
from hf_cnn_ft.share.exports.exported import is_export
from hf_cnn_ft.share.exports.failures import converted
from hf_cnn_ft.share.exports.formats import FORMATS, Conversion, ExportFormat, Runner
from hf_cnn_ft.share.exports.qat import FineTune, quantization_aware_fine_tune
from hf_cnn_ft.share.exports.registry import export_format
from hf_cnn_ft.share.run_dir import load_run

logger = logging.getLogger(__name__)

CHECK_IMAGES = 16
# int8 activation ranges are observed on up to this many training images (all of a smaller training split).
# PT2E's histogram observers need many: MobileNetV2 on ELPV lost 6.0 points of defective F1 calibrated on 64
# scans, 3.1 on 300 and 2.1 on 1,000 (benchmarks/RESULTS.md); the pass is forward-only, about a minute here.
CALIBRATION_IMAGES = 1000


@dataclass(frozen=True)
class Int8Settings:
    max_drop: float | None
    opset: int
    qat_epochs: int


@dataclass
class ExportResult:
    directory: Path
    format: str
    model_path: Path
    max_abs_diff: float
    agreement: float  # share of check images whose top class is PyTorch's
    checked_images: int
    quantized_path: Path | None = None
    accuracy: dict[str, float] = field(default_factory=dict)  # validation accuracy: torch, export, int8
    validation_images: int = 0
    qat_epochs: int = 0
    calibration_images: int = 0

    @property
    def int8_drop(self) -> float | None:
        """Points of validation accuracy the int8 model loses against the float export."""
        if "int8" not in self.accuracy:
            return None
        return round(100 * (self.accuracy["export"] - self.accuracy["int8"]), 2)


class LogitsOnly(nn.Module):
    """The classifier as a plain tensor -> tensor function, the shape every runtime's graph has."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # A timm backbone exports as itself; the transformers wrapper adds only dict plumbing.
        self.timm_model = model.timm_model if is_timm_model(model) else None
        self.model = None if self.timm_model is not None else model
        self.label_names = label_names_of(model)
        self.label_thresholds = label_thresholds(model)  # a multi-label model's; None otherwise

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.timm_model is not None:
            return self.timm_model(pixel_values)
        return self.model(pixel_values=pixel_values).logits


def check_export_folder(folder: Path) -> None:
    """Before any work: the export replaces only an older export, never a folder holding anything else."""
    if folder.is_dir() and any(folder.iterdir()) and not (folder / EXPORT_REPORT).is_file():
        raise UserError(
            f"--output {folder} holds other files and no {EXPORT_REPORT}: an export replaces its folder whole, "
            "so give a new or empty folder"
        )


def check_export_options(
    export: ExportFormat, quantize: str | None, max_drop: float | None, qat_epochs: int, images: list[Path] | None
) -> None:
    """Before any work: the options fit together and the format can do what they ask."""
    if quantize not in (None, "int8"):
        raise UserError(f"--quantize must be int8, got '{quantize}'")
    for option, given in (("--max_drop", max_drop is not None), ("--qat_epochs", qat_epochs > 0)):
        if given and quantize is None:
            raise UserError(f"{option} is about the int8 model: add --quantize int8")
    if qat_epochs < 0:
        raise UserError(f"--qat_epochs must be 0 or more, got {qat_epochs}")
    if qat_epochs and not export.qat:
        with_qat = ", ".join(f.name for f in FORMATS.values() if f.qat)
        raise UserError(f"--qat_epochs: {export.name} quantizes after training only; quantization-aware: {with_qat}")
    if qat_epochs and images:
        raise UserError("--qat_epochs trains on the run's training split: leave out --images")


def _pixels(dataset: Dataset, data_config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    transform = eval_transform(data_config)
    pixels = np.concatenate([batch.numpy() for batch in pixel_batches(dataset, transform, batch_size=32)])
    labels = split_labels(dataset)
    if is_multi_label(dataset.features[LABEL_COLUMN]):  # label sets as multi-hot rows
        return pixels.astype(np.float32), targets_of(labels, dataset.features[LABEL_COLUMN].feature.num_classes)
    return pixels.astype(np.float32), np.asarray(labels)


def _torch_logits(module: nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [module(torch.from_numpy(pixels[i : i + 64])).float().numpy() for i in range(0, len(pixels), 64)]
        )


def _check_data(model_dir: Path, images: list[Path] | None) -> tuple[Dataset, Dataset]:
    """(calibration images, check images): the run's training and validation splits, or the given images."""
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


def _accuracy(logits: np.ndarray, labels: np.ndarray, thresholds: list[float] | None) -> float:
    """Share of images answered right (of a multi-label model: every label, at its thresholds)."""
    return float(per_image_correct(logits, labels, thresholds).mean()) if len(labels) else float("nan")


def _checked(
    export: ExportFormat, path: Path, torch_logits: np.ndarray, pixels: np.ndarray, tolerance: float
) -> tuple[float, float]:
    """The runtime's logits on the check images against PyTorch's: (max |difference|, top-class agreement);
    past `tolerance`, one line saying so."""
    runner = export.load(path, None)
    # Batches of a size the export never saw: a dynamic batch axis must really be dynamic.
    logits = np.concatenate([runner(pixels[i : i + 3]) for i in range(0, len(pixels), 3)])
    difference = float(np.abs(logits - torch_logits).max())
    agreement = float((logits.argmax(-1) == torch_logits.argmax(-1)).mean())
    if not difference <= tolerance:
        raise UserError(
            f"{export.name} check failed: max |logit difference| {difference:.3g} on {len(pixels)} images exceeds "
            f"the tolerance {tolerance:g} (top class agrees on {agreement:.0%}); nothing was written"
        )
    return difference, agreement


def export_model(
    model_dir: str | Path,
    output_dir: str | Path | None = None,
    format: str = "onnx",
    quantize: str | None = None,
    tolerance: float = 1e-3,
    images: list[Path] | None = None,
    max_drop: float | None = None,
    opset: int = 18,
    qat_epochs: int = 0,
) -> ExportResult:
    """Exports, checks the runtime's logits against PyTorch's on real images (failing past `tolerance`), and
    with `quantize="int8"` adds the int8 model and what it costs (failing past `max_drop` points), fine-tuned
    `qat_epochs` times over the training split with its quantizers in place when asked."""
    export = export_format(format)
    export.require()
    check_export_options(export, quantize, max_drop, qat_epochs, images)
    model_dir = Path(model_dir)
    if is_export(model_dir):
        raise UserError(f"{model_dir} is an export already: export from the run folder it came from")
    output = Path(output_dir) if output_dir else model_dir / export.name
    check_export_folder(output)
    model, data_config = load_run(model_dir)
    if qat_epochs and is_multi_label_model(model):
        raise UserError("--qat_epochs trains on one class per image; for a multi-label model, leave it out")
    module = LogitsOnly(model).eval()
    calibration_set, check_set = _check_data(model_dir, images)
    pixels, _ = _pixels(check_set.select(range(min(CHECK_IMAGES, len(check_set)))), data_config)
    staging = staging_folder_for(output)
    try:
        result = _fill(staging, export, module, pixels, tolerance, opset, data_config)
        if quantize == "int8":
            labelled = check_set if images is None else None
            int8 = Int8Settings(max_drop, opset, qat_epochs)
            _add_int8(result, export, module, data_config, calibration_set, labelled, int8)
        _write_sidecars(staging, result, model, model_dir, data_config, tolerance, max_drop)
        replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _moved(result, output)


def _fill(
    staging: Path,
    export: ExportFormat,
    module: nn.Module,
    pixels: np.ndarray,
    tolerance: float,
    opset: int,
    data_config: DataConfig,
) -> ExportResult:
    path = staging / export.model_file()
    example = torch.randn(2, 3, data_config.input_size, data_config.input_size)
    converted(export, Conversion(module, example, path, opset), export.convert)
    difference, agreement = _checked(export, path, _torch_logits(module, pixels), pixels, tolerance)
    return ExportResult(staging, export.name, path, difference, agreement, len(pixels))


def _add_int8(
    result: ExportResult,
    export: ExportFormat,
    module: nn.Module,
    data_config: DataConfig,
    calibration_set: Dataset,
    labelled: Dataset | None,
    settings: Int8Settings,
) -> None:
    """The statically quantized model beside the float one; on labelled validation images, what quantization
    costs in accuracy, refused past `max_drop` points."""
    calibration = calibration_set.shuffle(seed=0).select(range(min(CALIBRATION_IMAGES, len(calibration_set))))
    calibration_pixels, _ = _pixels(calibration, data_config)
    path = result.directory / export.model_file(int8=True)
    example = torch.randn(2, 3, data_config.input_size, data_config.input_size)
    fine_tune = _fine_tune(calibration_set, module, data_config, settings.qat_epochs) if settings.qat_epochs else None
    quantize = partial(export.quantize, calibration=calibration_pixels, fine_tune=fine_tune)
    converted(export, Conversion(module, example, path, settings.opset), quantize)
    result.quantized_path, result.qat_epochs, result.calibration_images = path, settings.qat_epochs, len(calibration)
    if labelled is None:
        return
    pixels, labels = _pixels(labelled, data_config)
    runs: dict[str, Runner] = {"export": export.load(result.model_path, None), "int8": export.load(path, None)}
    thresholds = module.label_thresholds
    result.accuracy = {"torch": _accuracy(_torch_logits(module, pixels), labels, thresholds)}
    result.accuracy |= {name: _accuracy(run(pixels), labels, thresholds) for name, run in runs.items()}
    result.validation_images = len(labels)
    max_drop = settings.max_drop
    if max_drop is not None and result.int8_drop > max_drop:
        raise UserError(
            f"int8 costs {result.int8_drop:.2f} points of validation accuracy on {len(labels)} images "
            f"({result.accuracy['export']:.4f} -> {result.accuracy['int8']:.4f}), more than --max_drop {max_drop:g}: "
            "nothing was written; export the float model, or raise --max_drop"
        )


def _fine_tune(train: Dataset, module: LogitsOnly, data_config: DataConfig, epochs: int) -> FineTune:
    """Quantization-aware fine-tuning on the whole training split, labels as the model's class indices."""
    names = train.features[LABEL_COLUMN].names
    model_index = {name: i for i, name in enumerate(module.label_names)}
    pixels, labels = _pixels(train, data_config)
    logger.info("quantization-aware training: %d epoch(s) over %d training images", epochs, len(labels))
    return quantization_aware_fine_tune(pixels, np.array([model_index[names[i]] for i in labels]), epochs)


def _write_sidecars(
    staging: Path,
    result: ExportResult,
    model: nn.Module,
    model_dir: Path,
    data_config: DataConfig,
    tolerance: float,
    max_drop: float | None,
) -> None:
    write_json(
        staging / PREPROCESSING,
        {
            **dataclasses.asdict(data_config),
            "resize_size": data_config.resize_size,
            "input": "pixel_values, NCHW float32 RGB",
            "labels": label_names_of(model),
            # Probabilities: softmax(logits). The temperature fitted when the run ended is already folded
            # into the graph's classification layer; it is recorded, not to be applied again.
            "calibration_temperature_folded": folded_temperature_of(model),
            # Below this score of the logits the answer is "unknown" (evaluation/rejection.py); null: never.
            UNKNOWN_REJECTION: getattr(model.config, UNKNOWN_REJECTION, None),
            # Several labels per image: sigmoid(logits), each label present at or above its threshold.
            **(
                {"problem_type": MULTI_LABEL, LABEL_THRESHOLDS: label_thresholds(model)}
                if is_multi_label_model(model)
                else {}
            ),
        },
    )
    if (model_dir / "recipe.yaml").is_file():  # `evaluate EXPORT` reads the run's own test split
        shutil.copyfile(model_dir / "recipe.yaml", staging / "recipe.yaml")
    write_json(staging / EXPORT_REPORT, _report(result, export_format(result.format), tolerance, max_drop))


def _report(result: ExportResult, export: ExportFormat, tolerance: float, max_drop: float | None) -> dict[str, Any]:
    files = sorted(p for p in result.directory.iterdir() if p.name.startswith("model"))
    return {
        "format": result.format,
        "batch": export.batch,
        "suffix": export.suffix,
        "files": {p.name: p.stat().st_size for p in files},
        "max_abs_logit_difference": result.max_abs_diff,
        "top_class_agreement": result.agreement,
        "tolerance": tolerance,
        "checked_images": result.checked_images,
        "int8": result.quantized_path.name if result.quantized_path else None,
        "validation_accuracy": result.accuracy,
        "validation_images": result.validation_images,
        "int8_drop_points": result.int8_drop,
        "calibration_images": result.calibration_images,
        "qat_epochs": result.qat_epochs,
        "max_drop": max_drop,
    }


def _moved(result: ExportResult, output: Path) -> ExportResult:
    """The result with its paths in the published folder."""
    moved = {"directory": output, "model_path": output / result.model_path.name}
    if result.quantized_path:
        moved["quantized_path"] = output / result.quantized_path.name
    return dataclasses.replace(result, **moved)
