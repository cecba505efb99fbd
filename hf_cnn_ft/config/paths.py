"""The paths a user names, checked without heavy imports or touching the data: local path or Hub id, a
model directory, image files, an output format. The recipe checks, the data sources and the command
line's run verbs share them, so a wrong path is one line at once."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hf_cnn_ft.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
PREDICTION_SUFFIXES = (".csv", ".json")
MODEL_FILES = ("config.json", "adapter_config.json")
# An export folder (`hf-cnn-ft export`): what was checked, and the input its runtime needs.
EXPORT_REPORT = "export_report.json"
PREPROCESSING = "preprocessing.json"
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def looks_like_local_path(source: str) -> bool:
    """True for what can only be a path (``./x``, ``/x``, ``~/x``, ``x/``, ``a/b/c``, ``x.csv``); ``ns/name`` may be
    a Hub id."""
    return (
        source.startswith(("/", ".", "~"))
        or source.endswith("/")
        or Path(source).suffix.lower() in TABLE_SUFFIXES
        or source.count("/") > 1
        or os.sep != "/"
        and os.sep in source
    )


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def check_safe_weights(folder: Path, what: str) -> None:
    """A model folder whose weights exist only as pickles is refused in one line: unpickling can run code, and
    this tool loads safetensors only."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(
        p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern) if p.name != "training_args.bin"
    )
    if pickled:
        raise UserError(
            f"{what} {folder}: its weights are a pickle ({pickled[0]}), which can run code when loaded and which "
            "this tool does not load: save them as safetensors (`model.save_pretrained(DIR)`), or give the file as "
            "model.weights (read with weights_only)"
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
    folder = local.parent if local.is_file() else local
    if (folder / EXPORT_REPORT).is_file():  # an export folder, or a model file in one: its runtime reads it
        return True
    if local.is_file():
        raise UserError(f"{source} is a file: give a run's output_dir, an export folder or a model file in one")
    if not any((local / name).is_file() for name in MODEL_FILES):
        raise UserError(
            f"{source} holds no model (no {' or '.join(MODEL_FILES)}): give the output_dir of a finished run"
        )
    check_safe_weights(local, "model")
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


def _nearest_existing(folder: Path) -> Path:
    """`folder` or the nearest of its parents that exists."""
    return next(candidate for candidate in (folder, *folder.parents) if candidate.exists())


def check_output_folder(folder: str | Path, option: str) -> Path:
    """Before any work: `folder` can be made and written in. Nothing is created: a command refused for
    another reason leaves no empty folder behind. Writing a scratch file into the nearest existing folder is
    the real test: permission bits do not stop root, and a read-only mount shows only on a write.
    """
    folder = Path(folder).expanduser().absolute()
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"{option} {folder}: {existing} is a file, not a folder: choose another place")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as exc:
        reason = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else exc.strerror or str(exc)
        raise UserError(f"{option} {folder}: cannot write there ({reason}): choose a folder you can write to") from None
    return folder


def check_output_file(path: str | Path, option: str, replace: bool = True) -> Path:
    """Before any work: the file `option` names can be written (its folder is created); with `replace`
    false, an existing file is refused rather than overwritten."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder: give a file name")
    if path.exists() and not replace:
        raise UserError(f"{option} {path} already exists: remove it or choose another name")
    check_output_folder(path.parent, option)
    return path
