"""The recipe's training section: transformers' `TrainingArguments`, with defaults for fine-tuning a CNN."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments


def _default_num_workers() -> int:
    # Decoding and augmenting a small image costs ~1-2 ms per core, far less than a CNN training
    # step; on a machine with two cores, workers only steal cores from the compute threads.
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus // 2)


@dataclass
class TrainArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults for fine-tuning a CNN on a small dataset."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints and artefacts go."})
    num_train_epochs: float = 10.0
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1
    weight_decay: float = 0.01
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    logging_strategy: str = "epoch"
    load_best_model_at_end: bool = True
    metric_for_best_model: str | None = "accuracy"
    save_total_limit: int | None = 2
    report_to: None | str | list[str] = "none"
    # The image column must reach the collator, which does the transforms (transformers #17894).
    remove_unused_columns: bool = False
    dataloader_num_workers: int = field(default_factory=_default_num_workers)
    # Workers that live across epochs: no re-forking (and re-importing) at every epoch start.
    dataloader_persistent_workers: bool = field(default_factory=lambda: _default_num_workers() > 0)
    dataloader_pin_memory: bool = field(default_factory=torch.cuda.is_available)
    seed: int = 42
    early_stopping_patience: int | None = field(
        default=5, metadata={"help": "Stop after this many evaluations without improvement; null disables."}
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum improvement of metric_for_best_model that counts."}
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On a Linux CPU, keep memory the process frees for reuse instead of returning it to the OS "
            "at every step: 1.2-1.8x faster training (benchmarks/RESULTS.md), for ~10% more peak memory, held "
            "until the process ends."
        },
    )

    def __post_init__(self) -> None:
        if self.bf16 and not torch.cuda.is_available():
            self.use_cpu = True  # bf16 autocast on the CPU: transformers asks for use_cpu explicitly
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            # Launched as several processes (torchrun, `accelerate launch --multi_gpu`) on a machine
            # without GPUs: accelerate forms a CPU process group (gloo) only when asked for the CPU.
            self.use_cpu = True
        super().__post_init__()
