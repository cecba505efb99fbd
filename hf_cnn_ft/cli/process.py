"""Process-wide settings that CPU training needs to run at the speed of the hardware.

They change the whole process (the allocator, the floating-point mode), so the library never applies
them by itself: the command line does, and Python users opt in with one call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

import torch

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
    torch.set_flush_denormal(True)
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
