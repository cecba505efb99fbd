"""The recipe's training section, built: transformers' `TrainingArguments` with the fine-tuning defaults
of `config.training_defaults`. Importing this module imports transformers and torch (seconds)."""

from __future__ import annotations

import functools
import os
import typing
from dataclasses import dataclass

import torch
from transformers import TrainingArguments

from hf_cnn_ft.config.training_defaults import TrainingDefaults, loader_plan


@dataclass
class TrainArguments(TrainingDefaults, TrainingArguments):
    """transformers' TrainingArguments with defaults for fine-tuning a CNN on a small dataset."""

    def __post_init__(self) -> None:
        self._settle_precision()
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True  # bf16 autocast on the CPU: transformers asks for use_cpu explicitly
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            # Launched as several processes (torchrun, `accelerate launch --multi_gpu`) on a machine
            # without GPUs: accelerate forms a CPU process group (gloo) only when asked for the CPU.
            self.use_cpu = True
        if self.dataloader_prefetch_factor is None and self.dataloader_num_workers > 0:
            self.dataloader_prefetch_factor = loader_plan().prefetch_factor  # deeper on a GPU, torch's own on a CPU
        super().__post_init__()

    def _settle_precision(self) -> None:
        """`precision` is the one setting; transformers' bf16 / fp16 switches are read as it and follow it."""
        asked = [name for name, on in (("bf16", self.bf16), ("fp16", self.fp16)) if on]
        if len(asked) > 1 or (asked and self.precision not in ("auto", asked[0])):
            raise ValueError(
                f"training.precision: {self.precision} contradicts training.{asked[0]}: true; set precision alone"
            )
        if asked:
            self.precision = asked[0]
        cuda = torch.cuda.is_available()
        if self.precision == "fp16" and not cuda:
            raise ValueError("training.precision: fp16 needs a CUDA GPU (a CPU has no fast float16): use bf16 or auto")
        if self.precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"training.precision: bf16 is not supported by {torch.cuda.get_device_name()}: use fp16 or auto"
            )
        self.bf16, self.fp16 = self.precision == "bf16", self.precision == "fp16"


@functools.cache
def training_fields() -> dict[str, type]:
    """Every key the training section accepts, with its type (resolved once: it takes a tenth of a second)."""
    return typing.get_type_hints(TrainArguments)
