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
from typing import Literal

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class LoaderPlan:
    """How batches are fed, chosen from the machine: cores per local process and the device."""

    workers: int
    pin_memory: bool
    prefetch_factor: int | None  # batches each worker prepares ahead (torch's default 2 where None)
    reason: str


def _cuda_available() -> bool:
    import torch  # only when the training arguments are built

    return torch.cuda.is_available()


def loader_plan() -> LoaderPlan:
    """Loader workers, pinned memory and prefetch for this machine and this process's share of it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # set by torchrun / accelerate launch
    share = max(1, cores // processes)
    machine = f"{cores} cores, {processes} training process{'es' if processes > 1 else ''} on this machine"
    if _cuda_available():
        # The GPU waits on decoding and augmentation: give them every core of this process's share but the
        # one that drives the GPU, and let each worker run further ahead than torch's default two batches.
        workers = min(8, share - 1)
        return LoaderPlan(workers, True, 4 if workers else None, f"{machine}, CUDA: one core drives the GPU")
    # On the CPU the model's own threads need the cores: decoding and augmenting a small image costs
    # ~1-2 ms, far less than a training step, so workers only help where there are cores to spare.
    workers = 0 if share <= 2 else min(8, share // 2)
    return LoaderPlan(workers, False, None, f"{machine}, no GPU: the model's threads keep the other cores")


@dataclass
class TrainingDefaults:
    """Fine-tuning defaults for transformers' TrainingArguments, and the keys this project adds."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints and artefacts go."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train even though output_dir holds a run (`train --overwrite`): the new run trains beside it "
            "and replaces it only once it has finished. Without it, a folder holding a run is refused."
        },
    )
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
        default_factory=lambda: loader_plan().workers,
        metadata={"help": "Loader processes per training process; default: from the cores and the device (logged)."},
    )
    # Workers that live across epochs: no re-forking (and re-importing) at every epoch start.
    dataloader_persistent_workers: bool = field(
        default_factory=lambda: loader_plan().workers > 0, metadata={"help": "Keep loader processes alive."}
    )
    dataloader_pin_memory: bool = field(
        default_factory=lambda: loader_plan().pin_memory,
        metadata={"help": "Pin batches in memory (default: on a GPU)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of training (the split has data.split_seed)."})
    early_stopping_patience: int | None = field(
        default=5, metadata={"help": "Stop after this many evaluations without improvement; null disables."}
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Minimum improvement of metric_for_best_model that counts."}
    )
    precision: Literal[PRECISIONS] = field(
        default="auto",
        metadata={
            "help": "auto (the fastest this machine runs the backbone in, by a short timed probe, cached), fp32, bf16 "
            "or fp16 (CUDA only) autocast; weights stay float32. Also used by evaluate, predict, report and app. The "
            "run's recipe.yaml records the precision auto chose."
        },
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On a Linux CPU, keep memory the process frees for reuse instead of returning it to the OS "
            "at every step: 1.2-1.8x faster training (benchmarks/RESULTS.md), for ~10% more peak memory, held "
            "until the process ends."
        },
    )
