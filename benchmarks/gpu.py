"""GPU throughput: `hf-cnn-ft train` vs a plain PyTorch loop, bf16 + channels_last, eager and compiled;
and whether the input pipeline keeps up.

For a CUDA machine (one device): ResNet-50, ConvNeXt-T and EfficientNet-B0 at 224 px, randomly
initialised (throughput does not depend on the weights; the machine needs no Hub), on generated
JPEG photos decoded by DataLoader workers. Each cell trains `--steps` steps after `--warmup` steps
(which also absorb torch.compile's compilation) and reports images/s and peak GPU memory. Prints one
table and appends it, with the command and machine, to benchmarks/RESULTS.md. About 6 minutes on one
H100/H200 with the defaults; `--models test_resnet --steps 3 --warmup 1 --image-size 64` checks it
anywhere, CPU included.

A second table times the tool's training input pipeline alone (decode-once cache read, augmentation,
collation, pinned copy; no model) at 1, 2, 4, ... loader workers and at the worker count the tool plans
for this machine: images/s, and per worker. Where the planned row is above the training row of a model,
the pipeline keeps that GPU busy.

    python benchmarks/gpu.py
    python benchmarks/gpu.py --models none          # the input pipeline only
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from common import TRAINING_ONLY, StepClock, make_photos, record, sync  # benchmarks/ is on the path as a script
from torch.utils.data import DataLoader
from transformers import default_data_collator

from hf_cnn_ft.config.recipe import build_recipe
from hf_cnn_ft.config.sections import AugmentArguments, DataArguments, ModelArguments
from hf_cnn_ft.config.training_defaults import loader_plan
from hf_cnn_ft.data.decode import decode_once
from hf_cnn_ft.data.inputs import with_pixel_values
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import train_transform
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.training.train import train

RESULTS = Path(__file__).with_name("RESULTS.md")


def tool(args: argparse.Namespace, model: str, compiled: bool) -> float:
    clock = StepClock(args.warmup)
    settings = {
        "dataset": str(args.photos),
        "model": model,
        "pretrained": False,
        "image_size": args.image_size,
        "per_device_train_batch_size": args.batch_size,
        "max_steps": args.warmup + args.steps,
        "bf16": args.bf16,
        "torch_compile": compiled,
        **TRAINING_ONLY,
        "validation_fraction": 0.05,
        "dataloader_num_workers": args.workers,
    }
    with tempfile.TemporaryDirectory() as out:
        train(build_recipe({**settings, "output_dir": out}, "gpu benchmark"), callbacks=[clock])
    return clock.timed_steps * args.batch_size / clock.seconds()


def plain_loop(args: argparse.Namespace, model_name: str, compiled: bool) -> float:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_image_data(DataArguments(dataset=str(args.photos), test_fraction=0.0, check_images=False))
    model, data_config = build_model(
        ModelArguments(model=model_name, pretrained=False, image_size=args.image_size), data.label_names
    )
    model.to(device, memory_format=torch.channels_last).train()
    dataset = with_pixel_values(data.splits["train"], train_transform(data_config, AugmentArguments()))
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=default_data_collator,
        num_workers=args.workers,
        pin_memory=device == "cuda",
        persistent_workers=args.workers > 0,
    )
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16)
    steps, started = 0, None
    while steps < args.warmup + args.steps:
        for batch in loader:
            pixels = batch["pixel_values"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = batch["labels"].to(device, non_blocking=True)
            with autocast:
                loss = forward(pixel_values=pixels, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if steps == args.warmup:
                sync()
                started = time.perf_counter()
            if steps == args.warmup + args.steps:
                break
    sync()
    return args.steps * args.batch_size / (time.perf_counter() - started)


def pipeline_speed(args: argparse.Namespace, workers: int, batches: int = 40) -> float:
    """Images/s of the training input pipeline alone: what `train` feeds the model, without the model."""
    data = load_image_data(DataArguments(dataset=str(args.photos), test_fraction=0.0, check_images=False))
    _, data_config = build_model(
        ModelArguments(model="test_resnet", pretrained=False, image_size=args.image_size), ["a", "b"]
    )
    data = decode_once(data, data_config)
    dataset = with_pixel_values(data.splits["train"], train_transform(data_config, AugmentArguments()))
    plan = loader_plan()
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=default_data_collator,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=(plan.prefetch_factor or 2) if workers else None,
        persistent_workers=workers > 0,
    )
    seen, started, images = 0, None, 0
    while seen < batches + 2:
        for batch in loader:
            seen += 1
            if seen == 2:  # the workers have started and filled their queues
                started = time.perf_counter()
            elif seen > 2:
                images += len(batch["labels"])
            if seen == batches + 2:
                break
    return images / (time.perf_counter() - started)


def pipeline_table(args: argparse.Namespace) -> str:
    cores, planned = os.cpu_count() or 1, loader_plan().workers
    counts = sorted({w for w in (1, 2, 4, 8, 16, 32) if w <= cores} | {planned})
    rows = []
    for workers in counts:
        speed = pipeline_speed(args, workers)
        mark = " (planned)" if workers == planned else ""
        rows.append(f"| {workers}{mark} | {speed:.0f} | {speed / max(workers, 1):.0f} |")
        print(rows[-1], flush=True)
    return "\n".join(["| loader workers | images/s | images/s per worker |", "|---|---|---|", *rows])


def peak_memory_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,convnext_tiny,efficientnet_b0")
    parser.add_argument("--image-size", dest="image_size", type=int, default=224)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device)"

    rows = []
    models = [] if args.models == "none" else args.models.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        args.photos = make_photos(Path(scratch) / "photos", count=max(256, 2 * args.batch_size))
        pipeline = pipeline_table(args)
        for model in models:
            for compiled in (False, True) if args.compile else (False,):
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                tool_speed = tool(args, model, compiled)
                tool_memory = peak_memory_gb()
                loop_speed = plain_loop(args, model, compiled)
                row = (
                    f"| {model} | {'compile' if compiled else 'eager'} | {tool_speed:.0f} | {loop_speed:.0f} "
                    f"| {tool_speed / loop_speed:.2f} | {tool_memory:.1f} |"
                )
                print(row, flush=True)
                rows.append(row)
    precision = "bf16 autocast" if args.bf16 else "fp32"
    table = "\n".join(
        [
            "| model | mode | hf-cnn-ft train img/s | plain loop img/s | ratio | peak GPU memory (GB, tool) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    plan = loader_plan()
    pipeline = f"Input pipeline alone ({args.image_size} px, batch {args.batch_size}; {plan.reason}):\n\n{pipeline}"
    table = f"{table}\n\n{pipeline}" if models else pipeline
    print("\n" + table)
    if not args.no_record:
        heading = f"### GPU training throughput, {args.image_size} px, batch {args.batch_size}, {precision}"
        heading += ", channels_last"
        record(heading, table, f"{device}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
