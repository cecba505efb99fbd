"""Writing run artefacts so that a crash never leaves an output directory looking complete.

Everything is first written under a hidden staging folder and then moved into place file by
file with `os.replace` (atomic on one filesystem). `metrics.json` moves last: its presence is
what marks a run as finished.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

TRAINER_STATE_NAME = "trainer_state.json"  # written last into every Trainer checkpoint

COMPLETION_MARKER = "metrics.json"
STAGING_DIR = ".staging"


def write_json(path: Path, data: Any) -> None:
    """Writes JSON to a temporary name beside `path`, then renames it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def mark_incomplete(output_dir: Path) -> None:
    """Called when a run starts: an older run's completion marker must not outlive it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / COMPLETION_MARKER).unlink(missing_ok=True)
    shutil.rmtree(output_dir / STAGING_DIR, ignore_errors=True)


def staging_dir(output_dir: Path) -> Path:
    path = output_dir / STAGING_DIR
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def publish(staging: Path, output_dir: Path) -> None:
    """Moves every staged file into `output_dir`, the completion marker last."""
    files = sorted(p for p in staging.iterdir() if p.is_file())
    files.sort(key=lambda p: p.name == COMPLETION_MARKER)
    for path in files:
        os.replace(path, output_dir / path.name)
    shutil.rmtree(staging, ignore_errors=True)


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint counts only if its trainer state, written last by the Trainer, parses."""
    state = path / TRAINER_STATE_NAME
    if not state.is_file():
        return False
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def checkpoints(output_dir: Path) -> list[Path]:
    found = []
    for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rpartition("-")[2]
        if path.is_dir() and step.isdigit():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.rpartition("-")[2]))


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    complete = [p for p in checkpoints(output_dir) if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Deletes checkpoints a crash cut short, so the resumed run can rewrite them."""
    removed = [p for p in checkpoints(output_dir) if not is_complete_checkpoint(p)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
