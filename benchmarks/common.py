"""What the benchmarks share: where and how a result is recorded (RESULTS.md, with the command and the
machine), training settings that time only training, a step clock, generated photos."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import TrainerCallback, default_data_collator

from hf_cnn_ft.config.sections import AugmentArguments, DataArguments, ModelArguments
from hf_cnn_ft.data.inputs import with_pixel_values
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import train_transform
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.models.precision import autocast

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """The machine and the versions of the libraries that make a figure (pinned by constraints.txt; named so
    that a figure measured before `make lock` refreshed them says so)."""
    import timm
    import transformers

    threads = torch.get_num_threads()
    libraries = f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {libraries}, {threads} threads"


def record(heading: str, body: str, machine_line: str | None = None) -> None:
    """Appends a dated `heading`, the command that ran (this script and its arguments), the machine and
    `body` to RESULTS.md."""
    command = shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    dated = f"{heading} ({time.strftime('%Y-%m-%d')})"
    with RESULTS.open("a") as handle:
        handle.write(f"\n{dated}\n\n`{command}`  \nMachine: {machine_line or machine()}\n\n{body}\n")


# `hf-cnn-ft train` doing nothing but training: no evaluation, checkpoints, logging or image checks,
# and images decoded every epoch, as a hand-written loop does.
TRAINING_ONLY = {
    "strategy": "full",
    "eval_strategy": "no",
    "save_strategy": "no",
    "load_best_model_at_end": False,
    "early_stopping_patience": None,
    "logging_strategy": "no",
    "disable_tqdm": True,
    "check_images": False,
    "decode_cache": False,
    "test_fraction": 0.0,
}


def make_photos(root: Path, count: int, size: int = 320, height: int | None = None) -> Path:
    """JPEG files of smooth random colour fields plus grain, in two class folders (decode cost like photos)."""
    rng = np.random.default_rng(0)
    height = height or size
    for index in range(count):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((size, height), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, smooth.shape, dtype=np.int16)
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(folder / f"{index}.jpg", quality=90)
    return root


class StepClock(TrainerCallback):
    """Times the steps after the warm-up, so compilation and the first CUDA kernels are not counted, up to the end
    of the last step, as a hand-written loop's clock stops (what the Trainer does after its last step, writing
    the run's files, is not training throughput)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.ended, self.timed_steps = warmup, None, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            sync()
            self.started = time.perf_counter()
        elif state.global_step > self.warmup:
            self.timed_steps += 1
            if state.global_step == state.max_steps:
                sync()
                self.ended = time.perf_counter()

    def seconds(self) -> float:
        return self.ended - self.started


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def hand_written_throughput(
    dataset: Path,
    model: ModelArguments,
    batch_size: int,
    steps: int,
    warmup: int,
    precision: str = "fp32",
    workers: int = 0,
) -> float:
    """Images/s of training with nothing but PyTorch (DataLoader, AdamW, forward, backward, step), in `precision`
    autocast (float16 with a loss scaler), channels_last, on the GPU when there is one, timed from the end of step
    `warmup` to the end of step `steps`."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_image_data(DataArguments(dataset=str(dataset), test_fraction=0.0, check_images=False))
    torch.manual_seed(0)
    network, data_config = build_model(model, data.label_names)
    network.to(device, memory_format=torch.channels_last).train()
    images = with_pixel_values(data.splits["train"], train_transform(data_config, AugmentArguments()))
    loader = DataLoader(
        images,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=default_data_collator,
        num_workers=workers,
        pin_memory=device == "cuda",
        persistent_workers=workers > 0,
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=0.01)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    done, started = 0, None
    while done < steps:
        for batch in loader:
            pixels = batch["pixel_values"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = batch["labels"].to(device, non_blocking=True)
            with autocast(precision, device):
                logits = network(pixel_values=pixels).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == warmup:
                sync()
                started = time.perf_counter()
            if done == steps:
                break
    sync()
    return (steps - warmup) * batch_size / (time.perf_counter() - started)
