"""Where a run's Trainer checkpoints are, and which of them are complete: plain file facts, read both
by the recipe checks (`--resume` needs a checkpoint) and by the run directory code."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
TRAINER_STATE_NAME = "trainer_state.json"  # written last into every Trainer checkpoint
RESUME_LATEST = {"true", "latest", "last", "yes", "1"}
REPLACEMENT_SUFFIX = ".overwriting"
NO_RESUME = {"false", "no", "0", "none", ""}


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be read whole, from its header alone: the header must parse and the
    tensors it lists must end exactly where the file does (a copy or a write cut short ends earlier)."""
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 2 <= length <= min(path.stat().st_size - 8, 100_000_000):
                return "its header is cut short"
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "its header does not parse"
    if 8 + length + max(ends, default=0) != path.stat().st_size:
        return "it is cut short"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Why a `torch.save` file (a zip archive with a checksum per entry) cannot be read, without unpickling it."""
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return "it is not a readable torch file"
    return f"its entry {broken} is damaged" if broken else None


def checkpoint_problem(path: Path) -> str | None:
    """What makes a checkpoint unusable for resuming, naming the file; None when every file reads whole.

    The Trainer writes its state last, so a checkpoint without one was cut short; a weights, optimizer,
    scheduler or random-state file that is truncated or damaged would stop the resumed run with a
    traceback (or worse, load garbage), so each is read as far as its format allows without loading it.
    """
    state = path / TRAINER_STATE_NAME
    if not state.is_file():
        return f"{TRAINER_STATE_NAME} is missing"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return f"{TRAINER_STATE_NAME} does not parse"
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not any(p.suffix == ".safetensors" for p in weights):
        return "it holds no .safetensors weights"
    for file in weights + sorted(path.glob("*.pt")) + sorted(path.glob("*.pth")):
        problem = _safetensors_problem(file) if file.suffix == ".safetensors" else _torch_file_problem(file)
        if problem:
            return f"{file.name}: {problem}"
    return None


def is_complete_checkpoint(path: Path) -> bool:
    return checkpoint_problem(path) is None


def checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint folders in `output_dir`, oldest first."""
    found = []
    for path in output_dir.glob(f"{CHECKPOINT_PREFIX}-*"):
        step = path.name.rpartition("-")[2]
        if path.is_dir() and step.isdigit():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.rpartition("-")[2]))


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    complete = [p for p in checkpoints(output_dir) if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def replacement_dir(output_dir: Path) -> Path:
    """Where `train --overwrite` trains when output_dir holds a run: beside it, so that the old run stays whole
    until the new one has finished and takes its place."""
    return output_dir.with_name(output_dir.name + REPLACEMENT_SUFFIX)


def resume_dir(output_dir: Path, overwrite: bool) -> Path:
    """Where `--resume` looks for the latest checkpoint: a killed `--overwrite` run left its checkpoints in the
    replacement folder, any other run in output_dir."""
    replacement = replacement_dir(output_dir)
    return replacement if overwrite and replacement.is_dir() else output_dir
