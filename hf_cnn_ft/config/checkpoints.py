"""Where a run's Trainer checkpoints are, and which of them are complete: plain file facts, read both
by the recipe checks (`--resume` needs a checkpoint) and by the run directory code."""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
TRAINER_STATE_NAME = "trainer_state.json"  # written last into every Trainer checkpoint
RESUME_LATEST = {"true", "latest", "last", "yes", "1"}
NO_RESUME = {"false", "no", "0", "none", ""}


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
