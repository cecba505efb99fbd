"""The paths a user names, checked without heavy imports or touching the data: local path or Hub id, a
model directory, image files, an output format. The recipe checks, the data sources and the command
line's run verbs share them, so a wrong path is one line at once."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hf_cnn_ft.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
PREDICTION_SUFFIXES = (".csv", ".json")
MODEL_FILES = ("config.json", "adapter_config.json")
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def looks_like_local_path(source: str) -> bool:
    """True for what can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x.csv``); ``ns/name`` may be a
    Hub id."""
    return (
        source.startswith(("/", ".", "~"))
        or Path(source).suffix.lower() in TABLE_SUFFIXES
        or source.count("/") > 1
        or os.sep != "/"
        and os.sep in source
    )


def check_model_location(source: str) -> bool:
    """True for a local model directory, False for a Hub id; one line for a path that holds no model."""
    local = Path(source).expanduser()
    if not local.exists():
        if looks_like_local_path(source) or source.count("/") != 1:
            raise UserError(
                f"model directory {source} does not exist: give the output_dir of a finished run, or a Hub repo id"
            )
        return False
    if not any((local / name).is_file() for name in MODEL_FILES):
        raise UserError(
            f"{source} holds no model (no {' or '.join(MODEL_FILES)}): give the output_dir of a finished run"
        )
    return True


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus those found (recursively) in named folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{item} does not exist: give image files or folders of images")
    if not files:
        raise UserError(f"no image files found in {', '.join(map(str, inputs))}")
    return files


def check_predictions_path(path: Path) -> None:
    """Before predicting: the file to write must be one of the formats predictions are written in."""
    if path.suffix.lower() not in PREDICTION_SUFFIXES:
        raise UserError(f"--output {path}: use a .csv or .json file name")
