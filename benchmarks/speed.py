"""Training throughput of `hf-cnn-ft train` against a minimal hand-written PyTorch loop.

Same model (pretrained weights from `data/weights`), same photos, resolution, batch size,
optimizer (AdamW), threads and memory layout; the two run interleaved in one process, in alternating
order, each timed in steady state (after `--warmup` steps).
Also measures the input pipeline alone (decode + augment + collate) against the training step
it feeds (from the image files and from the decode-once cache), the default recipe's time to a
target validation accuracy, and the peak resident memory. Appends the table to benchmarks/RESULTS.md.

    python benchmarks/speed.py --steps 40 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from pathlib import Path

import torch
from common import (  # benchmarks/ is on the path as a script
    TRAINING_ONLY,
    StepClock,
    hand_written_throughput,
    make_photos,
    record,
)
from torch.utils.data import DataLoader
from transformers import default_data_collator

from hf_cnn_ft.config.recipe import build_recipe, load_recipe
from hf_cnn_ft.config.sections import AugmentArguments, DataArguments, ModelArguments
from hf_cnn_ft.data.decode import decode_once
from hf_cnn_ft.data.inputs import with_pixel_values
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import train_transform
from hf_cnn_ft.extras.known_weights import import_known_weights
from hf_cnn_ft.extras.offline_data import prepare_dataset
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.training.machine import prepare_cpu_process
from hf_cnn_ft.training.train import train

RESULTS = Path(__file__).with_name("RESULTS.md")


def settings(args: argparse.Namespace) -> dict:
    return {
        **TRAINING_ONLY,
        "dataset": str(args.data),
        "model": str(args.model_dir),
        "bn": "train",  # as in the hand-written loop: every BatchNorm layer trains
        "image_size": args.image_size,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-4,
        "max_steps": args.steps,
        "dataloader_num_workers": 0,
    }


def tool_throughput(args: argparse.Namespace, **overrides) -> tuple[float, float]:
    """Images per second through `train()`, the code path of `hf-cnn-ft train`, in steady state: the
    clock runs from the end of step `--warmup` to the end of the last step, as in the hand-written loop.
    Also returns the seconds `Trainer.train` spent besides those steps (setup, warm-up steps)."""
    clock = StepClock(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        result = train(
            build_recipe({**settings(args), **overrides, "output_dir": out}, "speed benchmark"), callbacks=[clock]
        )
    return clock.timed_steps * args.batch_size / clock.seconds(), result.train_seconds - clock.seconds()


def hand_written(args: argparse.Namespace) -> float:
    """The same training with nothing but PyTorch: DataLoader, AdamW, forward, backward, step."""
    model = ModelArguments(model=str(args.model_dir), image_size=args.image_size)
    return hand_written_throughput(args.data, model, args.batch_size, args.steps, args.warmup)


def pipeline_and_step(args: argparse.Namespace) -> tuple[float, float, float]:
    """Images/s of decode + augment + collate alone (from the image files, then from the decode-once
    cache), and of the training step alone."""
    data = load_image_data(DataArguments(dataset=str(args.data), test_fraction=0.0, check_images=False))
    model, data_config = build_model(
        ModelArguments(model=str(args.model_dir), image_size=args.image_size), data.label_names
    )
    dataset = with_pixel_values(data.splits["train"], train_transform(data_config, AugmentArguments()))
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=default_data_collator
    )
    pipeline = _images_per_second(loader)
    # Decode once: the same loader reading the resized Arrow cache (built here, outside the timing).
    cached = decode_once(data, data_config)
    augmentation = train_transform(data_config, AugmentArguments())
    cached_loader = DataLoader(
        with_pixel_values(cached.splits["train"], augmentation),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=default_data_collator,
    )
    pipeline_cached = _images_per_second(cached_loader)

    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, len(data.label_names), (args.batch_size,))
    for _ in range(2):  # warm-up
        model(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    started = time.perf_counter()
    for _ in range(10):
        model(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    step = 10 * args.batch_size / (time.perf_counter() - started)
    return pipeline, pipeline_cached, step


def large_photo_pipeline(args: argparse.Namespace, count: int = 64) -> tuple[float, float]:
    """Input pipeline img/s on phone-sized JPEGs (2048x1536), from the files and from the decode-once cache."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = make_photos(Path(scratch) / "photos", count=count, size=2048, height=1536)
        data = load_image_data(DataArguments(dataset=str(folder), test_fraction=0.0, check_images=False))
        _, data_config = build_model(
            ModelArguments(model=str(args.model_dir), image_size=args.image_size), data.label_names
        )
        augmentation = train_transform(data_config, AugmentArguments())
        speeds = []
        for source in (data, decode_once(data, data_config, Path(scratch) / "cache")):
            loader = DataLoader(
                with_pixel_values(source.splits["train"], augmentation),
                batch_size=args.batch_size,
                shuffle=True,
                collate_fn=default_data_collator,
            )
            speeds.append(_images_per_second(loader))
    return speeds[0], speeds[1]


def _images_per_second(loader: DataLoader) -> float:
    started, images = time.perf_counter(), 0
    for batch in loader:
        images += len(batch["labels"])
    return images / (time.perf_counter() - started)


def time_to_accuracy(target: float) -> tuple[float | None, float, float]:
    """The default recipe (the demo's): seconds until the validation accuracy first reaches
    `target`, total training seconds, and the final test accuracy."""
    recipe_path = Path("recipes/food-efficientnet-lite0.yaml")
    with tempfile.TemporaryDirectory() as out:
        result = train(load_recipe(recipe_path, ["--output_dir", out, "--disable_tqdm", "true"]))
        history = json.loads((Path(out) / "metrics.json").read_text())
    probe = history.get("linear_probe_history") or []
    reached = next((e["seconds"] for e in probe if e.get("eval_accuracy", 0.0) >= target), None)
    return reached, result.train_seconds, result.report["accuracy"]


def feature_cache_epochs(args: argparse.Namespace) -> tuple[float, float, float]:
    """Seconds for one head-only epoch on cached features, one running the frozen backbone, and
    the one-off feature extraction."""
    from hf_cnn_ft.config.sections import FinetuneArguments
    from hf_cnn_ft.data.transforms import eval_transform
    from hf_cnn_ft.models.anatomy import head_linear
    from hf_cnn_ft.strategies.probe import BackboneFeatures, extract_features, train_head

    data = load_image_data(DataArguments(dataset=str(args.data), test_fraction=0.0, check_images=False))
    model, data_config = build_model(
        ModelArguments(model=str(args.model_dir), image_size=args.image_size), data.label_names
    )
    model.to(memory_format=torch.channels_last)
    transform = eval_transform(data_config)
    head = head_linear(model.timm_model, len(data.label_names))
    one_epoch = FinetuneArguments(head_epochs=1)
    started = time.perf_counter()
    features, labels = extract_features(model, data.splits["train"], transform, channels_last=True)
    extraction = time.perf_counter() - started
    started = time.perf_counter()
    train_head(head, features, labels, one_epoch, seed=0)
    cached = time.perf_counter() - started
    started = time.perf_counter()
    train_head(head, BackboneFeatures(model, data.splits["train"], transform, True), labels, one_epoch, seed=0)
    uncached = time.perf_counter() - started
    return cached, uncached, extraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="efficientnet_lite0")
    parser.add_argument("--image-size", dest="image_size", type=int, default=224)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="steps before the clock starts, in both loops")
    parser.add_argument("--target", type=float, default=0.82, help="validation accuracy for time-to-accuracy")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_flush_denormal(True)
    args.data = prepare_dataset("food", Path("data"))
    args.model_dir = import_known_weights(args.weights, cache_dir=Path("data/weights"))

    # One short untimed run of each first: the first training in a process pays for one-off work
    # (oneDNN primitives for these shapes, heap growth) that would otherwise land on round 1.
    # The hand-written loop is also timed once before the tool has run, with glibc's default of
    # returning freed memory to the OS; the tool's run then keeps freed memory in the process
    # (training.keep_freed_memory), a process-wide setting that every later run of both loops shares.
    short = argparse.Namespace(**{**vars(args), "steps": args.warmup + 2})
    hand_written(short)
    hand_default_allocator = hand_written(args)
    prepare_cpu_process()  # what the command line does before training
    tool_throughput(short)
    hand_written(short)
    tool, hand, setup = [], [], []
    for repeat in range(args.repeats):  # interleaved, the order alternating: A/B, B/A, A/B...
        if repeat % 2:
            hand.append(hand_written(args))
        speed, overhead = tool_throughput(args)
        tool.append(speed)
        setup.append(overhead)
        if not repeat % 2:
            hand.append(hand_written(args))
        print(
            f"round {repeat + 1}: hf-cnn-ft train {tool[-1]:.1f} img/s, hand-written loop {hand[-1]:.1f} img/s",
            flush=True,
        )
    bf16, _ = tool_throughput(args, bf16=True)  # the default stays fp32 on the CPU unless this is faster
    pipeline, pipeline_cached, step = pipeline_and_step(args)
    reached, total_seconds, test_accuracy = time_to_accuracy(args.target)
    large_files, large_cached = large_photo_pipeline(args)
    cached, uncached, extraction = feature_cache_epochs(args)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tool_mean, hand_mean = sum(tool) / len(tool), sum(hand) / len(hand)
    table = "\n".join(
        [
            "| measurement | value |",
            "|---|---|",
            f"| hf-cnn-ft train (Trainer path) | {tool_mean:.1f} img/s ({', '.join(f'{t:.1f}' for t in tool)}) |",
            f"| hand-written PyTorch loop | {hand_mean:.1f} img/s ({', '.join(f'{h:.1f}' for h in hand)}) |",
            f"| ratio tool / hand-written | {tool_mean / hand_mean:.2f} |",
            f"| hand-written loop, glibc default: freed memory returned to the OS (before the tool ran) "
            f"| {hand_default_allocator:.1f} img/s (keeping it: {hand_mean / hand_default_allocator:.2f}x) |",
            f"| Trainer.train time besides the timed steps (setup + {args.warmup} warm-up steps) "
            f"| {sum(setup) / len(setup):.1f} s |",
            f"| hf-cnn-ft train with bf16 autocast (CPU) | {bf16:.1f} img/s ({bf16 / tool_mean:.2f}x fp32) |",
            f"| input pipeline alone (decode + augment + collate) | {pipeline:.1f} img/s |",
            f"| training step alone | {step:.1f} img/s |",
            f"| input pipeline from the decode-once cache | {pipeline_cached:.1f} img/s |",
            f"| pipeline / step (files; cache) | {pipeline / step:.1f}x; {pipeline_cached / step:.1f}x |",
            f"| input pipeline, 2048x1536 JPEG photos: files; decode-once cache | {large_files:.1f}; "
            f"{large_cached:.1f} img/s ({large_cached / large_files:.1f}x) |",
            f"| default recipe: time to {args.target:.2f} validation accuracy | "
            + (f"{reached:.1f} s |" if reached is not None else "not reached |"),
            f"| default recipe: training time, final test accuracy | {total_seconds:.1f} s, {test_accuracy:.3f} |",
            f"| head-only epoch, cached features | {cached * 1000:.1f} ms (one-off extraction {extraction:.1f} s) |",
            f"| head-only epoch, frozen backbone run every batch | {uncached:.1f} s |",
            f"| feature cache speed-up per head-only epoch | {uncached / cached:.0f}x |",
            f"| peak RSS (whole benchmark process) | {peak_mb:.0f} MB |",
        ]
    )
    print("\n" + table)
    if not args.no_record:
        heading = f"### Training throughput, {args.weights} at {args.image_size} px, batch {args.batch_size}"
        heading += f", {args.steps} steps"
        record(heading, table)


if __name__ == "__main__":
    main()
