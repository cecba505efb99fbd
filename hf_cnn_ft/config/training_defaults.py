"""The training section's own keys and fine-tuning defaults, declared without importing transformers.

The training section accepts every field of transformers' `TrainingArguments`. Importing that class
takes seconds (it imports torch), so the keys this project sets a default for, or adds, are declared
here, in a plain dataclass: a recipe is read, coerced and checked against them at once, and a bad value
fails before any heavy import. `config.training_arguments.TrainArguments` combines this declaration with
`TrainingArguments` (this class's fields override the inherited defaults) when the recipe is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _default_num_workers() -> int:
    # Decoding and augmenting a small image costs ~1-2 ms per core, far less than a CNN training
    # step; on a machine with two cores, workers only steal cores from the compute threads.
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus // 2)


def _cuda_available() -> bool:
    import torch  # only when the training arguments are built

    return torch.cuda.is_available()


@dataclass
class TrainingDefaults:
    """Fine-tuning defaults for transformers' TrainingArguments, and the keys this project adds."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints and artefacts go."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Epochs to train (> 0)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of the head (> 0)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warmup: a number of steps, or below 1 a fraction of all steps."}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training images per step and device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation images per step and device."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: epoch, steps or no."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: epoch, steps, best or no."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When to log: epoch, steps or no."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint's weights."})
    metric_for_best_model: str | None = field(
        default="accuracy", metadata={"help": "Model selection metric: accuracy, f1_macro, ... or loss."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept on disk (the best too)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers: none, tensorboard, ..."})
    # The image column must reach the collator, which does the transforms (transformers #17894).
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay false."})
    dataloader_num_workers: int = field(
        default_factory=_default_num_workers, metadata={"help": "Loader processes; default: 0 on 2 cores."}
    )
    # Workers that live across epochs: no re-forking (and re-importing) at every epoch start.
    dataloader_persistent_workers: bool = field(
        default_factory=lambda: _default_num_workers() > 0, metadata={"help": "Keep loader processes alive."}
    )
    dataloader_pin_memory: bool = field(
        default_factory=_cuda_available, metadata={"help": "Pin batches in memory (default: on a GPU)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of training (the split has data.split_seed)."})
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
