"""What a training process settles with its machine: the process-wide CPU settings (denormals, the allocator),
the launch, the loader.

The process-wide settings change the whole process, so the library never applies them by itself: the
command line does (`prepare_cpu_process`), and Python users opt in with one call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from pathlib import Path

import torch

from hf_cnn_ft.config.training_arguments import TrainArguments
from hf_cnn_ft.config.training_defaults import loader_plan
from hf_cnn_ft.models.precision import flush_denormals_on_cpu

logger = logging.getLogger(__name__)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def prepare_cpu_process(keep_freed_memory: bool = True) -> None:
    """The process-wide settings for training on the CPU; the command line applies them, and a Python
    user calls this once, before training (`hf_cnn_ft.prepare_cpu_process`). Nothing happens on a GPU
    machine.

    Denormal floats cost 20-30x on some CPUs, so they are flushed to zero; and, with
    `keep_freed_memory` (the recipe's training.keep_freed_memory), freed memory stays in the process
    (see below). Both last until the process ends.
    """
    if torch.cuda.is_available():
        return
    flush_denormals_on_cpu()
    if keep_freed_memory:
        keep_freed_memory_in_process()


def keep_freed_memory_in_process() -> bool:
    """Tells glibc to serve every allocation from its heap and never hand freed memory back to the OS.

    By default glibc maps each large block (an activation or gradient tensor of tens of MB) straight
    from the OS and unmaps it when freed, so every training step faults all of those pages back in,
    zero-filled: about half a million page faults per step for EfficientNet-Lite0 at batch 32, 224 px,
    and 1.2-1.8x slower training (benchmarks/RESULTS.md). Kept in the process, the pages are reused.
    The cost: the process holds its peak memory until it exits (measured: +10% peak RSS).
    Returns whether the setting took effect (only on Linux with glibc).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        applied = False
    if not applied:
        logger.info("could not keep freed memory in the process (glibc mallopt unavailable)")
    return applied


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


def settle_process(training: TrainArguments) -> None:
    """Before a run's first step: denormals off on the CPU, a misleading launch flagged, the loader logged."""
    warn_if_single_process_cpu_launch()
    flush_denormals_on_cpu()
    if training.process_index == 0:
        logger.info(describe_input_pipeline(training))
