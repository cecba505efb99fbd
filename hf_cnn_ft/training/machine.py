"""What a training process settles with its machine before the first step: denormals, the launch, the loader."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from hf_cnn_ft.config.training_arguments import TrainArguments
from hf_cnn_ft.config.training_defaults import loader_plan

logger = logging.getLogger(__name__)


def flush_denormals_on_cpu() -> None:
    """Denormal floats cost 20-30x on some CPUs; training never needs them."""
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)


def warn_if_single_process_cpu_launch() -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process unless MPI is set up."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in os.environ:
        return
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    args = [a.decode(errors="replace") for a in parent]
    if "--num_processes" in args and args.index("--num_processes") + 1 < len(args):
        requested = args[args.index("--num_processes") + 1]
        if requested.isdigit() and int(requested) > 1:
            logger.warning(
                "accelerate launch --cpu runs a single process without MPI; for %s CPU processes use "
                "`accelerate launch --multi_gpu --num_processes %s` (it falls back to CPU/gloo) or torchrun",
                requested,
                requested,
            )


def describe_input_pipeline(args: TrainArguments) -> str:
    """The loader settings of this run and why: the machine's plan, or the recipe where it chose otherwise."""
    plan = loader_plan()
    workers, pinned, prefetch = args.dataloader_num_workers, args.dataloader_pin_memory, args.dataloader_prefetch_factor
    chosen = (workers, pinned, prefetch) == (plan.workers, plan.pin_memory, plan.prefetch_factor)
    ahead = f", {prefetch or 2} batches prefetched per worker" if workers else " (batches made in the training process)"
    return (
        f"input pipeline: {workers} loader worker{'s' if workers != 1 else ''} per process{ahead}, "
        f"pinned memory {'on' if pinned else 'off'}; {plan.reason if chosen else 'as the recipe sets'}"
    )


def settle_process(args: TrainArguments) -> None:
    """Before a run's first step: denormals off on the CPU, a misleading launch flagged, the loader logged."""
    warn_if_single_process_cpu_launch()
    flush_denormals_on_cpu()
    if args.process_index == 0:
        logger.info(describe_input_pipeline(args))
