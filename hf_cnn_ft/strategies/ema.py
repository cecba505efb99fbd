"""An exponential moving average of the weights, kept beside training (as timm's ModelEmaV3 does).

Averaging the last steps' weights smooths the noise of small-batch fine-tuning. Validation runs
on the averaged weights, every checkpoint stores them (`ema.safetensors`, so a resumed run continues
the same average), and the final model is the average — that of the best checkpoint when the best
model is restored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

EMA_FILE = "ema.safetensors"


class WeightAverage(TrainerCallback):
    def __init__(self, decay: float, warmup: bool = True, resumed_from: str | None = None) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"finetune.ema_decay must be in (0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.resumed_from = Path(resumed_from) if resumed_from else None  # the checkpoint a resumed run starts from
        self.average: dict[str, torch.Tensor] = {}
        self.updates = 0

    def _state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}

    def current_decay(self) -> float:
        # Early on the average would be dominated by the starting weights: ramp the decay up (timm's warmup).
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = self._state(model)
        if not self.average:
            self.average = {
                k: v.detach().float().clone(memory_format=torch.contiguous_format) for k, v in state.items()
            }
            return
        decay = self.current_decay()
        self.updates += 1
        for key, value in state.items():
            self.average[key].lerp_(value.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own again after it."""
        if not self.average:
            yield
            return
        own = {k: v.detach().clone() for k, v in self._state(model).items()}
        self.copy_into(model)
        try:
            yield
        finally:
            model.load_state_dict(own, strict=False)

    @torch.no_grad()
    def copy_into(self, model: nn.Module) -> None:
        state = model.state_dict()
        for key, value in self.average.items():
            state[key].copy_(value.to(state[key].dtype))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.average and state.global_step > 0:  # resumed: continue the checkpoint's average
            checkpoint = self.resumed_from or Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if (checkpoint / EMA_FILE).is_file():
                stored = load_file(str(checkpoint / EMA_FILE))
                self.updates = int(stored.pop("__updates__").item())
                self.average = stored
            else:
                logger.warning(
                    "%s has no %s: the weight average restarts from the current weights", checkpoint, EMA_FILE
                )
        if not self.average:
            self.update(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.update(model)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            save_file({**self.average, "__updates__": torch.tensor(self.updates)}, str(checkpoint / EMA_FILE))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        best = state.best_model_checkpoint if args.load_best_model_at_end else None
        if best and (Path(best) / EMA_FILE).is_file():
            stored = load_file(str(Path(best) / EMA_FILE))
            stored.pop("__updates__")
            self.average = stored
        self.copy_into(model)
