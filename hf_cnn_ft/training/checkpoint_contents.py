"""A checkpoint folder that resumes anywhere, as the Trainer's own files promise: besides them it carries what
the rest of the run would otherwise look for in the run folder.

- the probed start of a probing strategy (`probed_start.safetensors`), which the end of the run compares with
  and interpolates towards;
- the weights of the best checkpoint so far when that is another folder (`best/`), which the end of the run
  loads (`load_best_model_at_end`) and which a copy of one checkpoint folder would otherwise lose.

Both are hard links where the filesystem allows, so they cost no space; a copy of the folder carries files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_cnn_ft.config.checkpoints import TRAINER_STATE_NAME

logger = logging.getLogger(__name__)

BEST_DIR = "best"
_TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "training_args.bin", TRAINER_STATE_NAME)


def _link(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


def _weight_files(checkpoint: Path) -> list[Path]:
    """What loading a checkpoint's model needs: weights and configs, not the optimizer or random states."""
    return [
        p
        for p in checkpoint.iterdir()
        if p.is_file() and p.name not in _TRAINING_STATE and not p.name.startswith("rng_state")
    ]


class SelfContainedCheckpoints(TrainerCallback):
    """Adds `carried` files and the best checkpoint's weights to every checkpoint the Trainer saves; on a
    resumed run whose recorded best checkpoint is not where it was, finds it in the resumed folder."""

    def __init__(self, carried: list[Path], resumed_from: str | None = None) -> None:
        self.carried = carried
        self.resumed_from = Path(resumed_from) if resumed_from else None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resumed_from is None or state.best_model_checkpoint is not None:
            return
        recorded = json.loads((self.resumed_from / TRAINER_STATE_NAME).read_text()).get("best_model_checkpoint")
        if not recorded:
            return
        # The resumed checkpoint is the one saved at the step it resumes from, whatever its folder is called now.
        itself = Path(recorded).name == f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        here = self.resumed_from if itself else self.resumed_from / BEST_DIR
        if here.is_dir():
            state.best_model_checkpoint = str(here)
            logger.info("the best checkpoint so far (%s) is read from %s", recorded, here)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        for path in self.carried:
            if path.is_file():
                _link(path, checkpoint / path.name)
        best = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
        if best is not None and best.is_dir() and best.resolve() != checkpoint.resolve():
            (checkpoint / BEST_DIR).mkdir(exist_ok=True)
            for path in _weight_files(best):
                _link(path, checkpoint / BEST_DIR / path.name)
