"""Cost as the data grows: preparation and one training epoch at 1k, 10k and 60k real images.

Each size is a Fashion-MNIST subset (the 70,000 images pooled, shuffled, the first N as the training
split and the next 1,000 as validation, evaluated but not timed), trained by `train()` as `hf-cnn-ft
train` would: the readable check, duplicate hashes and decode-once cache in a fresh datasets cache, then
one epoch of the imported MobileNetV2 with its backbone frozen (strategy full, freeze backbone) at the
input size the tool chooses for 28-px images. Every size runs in its own process, twice: the second run
finds the cache built and shows what preparation costs then. Reported per size: preparation (cold and
warm), the epoch, seconds per 1,000 images, and the process's peak resident memory. The goal (issue 17):
seconds per 1,000 images within 1.5x across sizes, peak memory growing by less than 20% from 10k to 60k.
Then a stream of --stream generated 28-px images (1M by default) through the training input pipeline alone
(`data.streaming`'s reader: shards, shuffle buffer, decode, augmentation at 128 px, batches; no model), in
its own process: seconds per 1,000 images and peak RSS at every tenth of the stream, which must stay flat.
Writes the tables and a plot (benchmarks/scale.png) and appends them to benchmarks/RESULTS.md.

    python benchmarks/scale.py
    python benchmarks/scale.py --sizes 200,400 --validation 100 --stream 20000 --no-record   # a quick check
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TRAINING_ONLY, record  # benchmarks/ is on the path when run as a script
from transformers import TrainerCallback

HERE = Path(__file__).resolve().parent


class EpochClock(TrainerCallback):
    """When the Trainer's loop starts and its epoch ends (before the epoch's evaluation, which reads the same
    1,000 validation images at every size): everything before it is preparation."""

    def __init__(self) -> None:
        self.began = self.ended = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.ended = time.perf_counter()


def make_subset(source: Path, size: int, validation: int, root: Path) -> Path:
    """The first `size` of the pooled, shuffled images as train, the next `validation` as validation, on disk."""
    import datasets

    target = root / f"fashion-mnist-{size}"
    if target.exists():
        return target
    pooled = datasets.concatenate_datasets(list(datasets.load_from_disk(str(source)).values())).shuffle(seed=0)
    if size + validation > len(pooled):
        raise SystemExit(f"{size} images asked for; {source} has {len(pooled) - validation} to train on")
    splits = {"train": pooled.select(range(size)), "validation": pooled.select(range(size, size + validation))}
    datasets.DatasetDict(splits).save_to_disk(str(target))
    return target


def one_run(data: Path, model: Path, out: Path) -> dict:
    """In this process: one epoch through `train()`, timed by phase (what the parent starts per size)."""
    from hf_cnn_ft.config.recipe import build_recipe
    from hf_cnn_ft.training.machine import prepare_cpu_process
    from hf_cnn_ft.training.train import train

    prepare_cpu_process()
    settings = {
        **TRAINING_ONLY,
        "dataset": str(data),
        "model": str(model),
        "freeze": "backbone",
        "check_images": True,
        "decode_cache": True,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 64,
        "report_at_end": False,
        "output_dir": str(out),
    }
    clock, started = EpochClock(), time.perf_counter()
    train(build_recipe(settings, "scale benchmark"), callbacks=[clock])
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"prepare": clock.began - started, "epoch": clock.ended - clock.began, "peak_mb": peak_kb / 1024}


def run_size(data: Path, model: Path, cache: Path) -> dict:
    """The size twice in fresh processes sharing one datasets cache: cold, then warm preparation."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    runs = []
    for attempt in ("cold", "warm"):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, str(Path(__file__)), "--one", str(data), "--model", str(model), "--out", out]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{attempt} run on {data} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    return {
        "prepare": cold["prepare"],
        "prepare_warm": warm["prepare"],
        "epoch": cold["epoch"],
        "peak_mb": max(cold["peak_mb"], warm["peak_mb"]),
    }


STREAM_SHARDS = 64


@functools.cache
def _image_pool(size: int = 256) -> tuple[bytes, ...]:
    """Distinct 28-px grey PNGs; each is decoded anew every time the stream brings it by."""
    import numpy as np
    from PIL import Image

    rng, pool = np.random.default_rng(0), []
    for _ in range(size):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
        pool.append(buffer.getvalue())
    return tuple(pool)


def _synthetic_rows(parts: list[int], count: int):
    pool = _image_pool()
    for part in parts:
        for index in range(part, count, STREAM_SHARDS):
            yield {"image": {"bytes": pool[index % len(pool)], "path": None}, "label": index % 10}


def stream_run(count: int) -> list[dict]:
    """In this process: `count` generated images through the streaming input pipeline, timed every tenth."""
    import datasets
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from hf_cnn_ft.config.sections import AugmentArguments
    from hf_cnn_ft.config.training_defaults import loader_plan
    from hf_cnn_ft.data.data_config import DataConfig
    from hf_cnn_ft.data.streaming import StreamingImages
    from hf_cnn_ft.data.transforms import train_transform
    from hf_cnn_ft.training.machine import prepare_cpu_process

    prepare_cpu_process()
    names = [str(label) for label in range(10)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    stream = datasets.IterableDataset.from_generator(
        _synthetic_rows,
        features=features,
        gen_kwargs={"parts": list(range(STREAM_SHARDS)), "count": count},
    )
    workers = loader_plan().workers
    transform = train_transform(DataConfig(input_size=128, crop_pct=1.0), AugmentArguments())
    images = StreamingImages(stream, transform, seed=0, buffer_size=1000, workers=workers)
    loader = DataLoader(images, batch_size=64, num_workers=workers, collate_fn=default_data_collator)
    marks, points, seen, started = [count * k // 10 for k in range(1, 11)], [], 0, time.perf_counter()
    for batch in loader:
        seen += len(batch["labels"])
        if seen >= marks[len(points)]:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            points.append({"images": seen, "seconds": time.perf_counter() - started, "peak_mb": peak})
            if len(points) == len(marks):
                break
    return points


def streamed(count: int) -> list[dict]:
    """The stream in its own process, so its peak memory is the stream's alone."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    command = [sys.executable, str(Path(__file__)), "--stream-one", str(count)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the stream of {count} images failed:\n{done.stderr[-3000:]}")
    points = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"stream: {points[-1]}", flush=True)
    return points


def plot(sizes: list[int], rows: list[dict], stream: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    per_k = [(row["prepare"] + row["epoch"]) / (size / 1000) for size, row in zip(sizes, rows)]
    time_axis.plot(sizes, per_k, "o-", label="preparation + epoch")
    time_axis.plot(sizes, [r["epoch"] / (s / 1000) for s, r in zip(sizes, rows)], "s--", label="epoch")
    time_axis.set(xscale="log", xlabel="training images", ylabel="seconds per 1,000 images", ylim=(0, None))
    time_axis.legend()
    memory_axis.plot(sizes, [row["peak_mb"] for row in rows], "o-", label="preparation + epoch")
    if stream:
        memory_axis.plot(
            [p["images"] for p in stream], [p["peak_mb"] for p in stream], ".-", label="stream, input only"
        )
        memory_axis.legend()
    memory_axis.set(xscale="log", xlabel="training images", ylabel="peak resident memory (MB)", ylim=(0, None))
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,60000")
    parser.add_argument("--data", type=Path, default=Path("data/fashion-mnist"))
    parser.add_argument("--model", type=Path, default=Path("data/weights/mobilenet_v2/model"))
    parser.add_argument("--validation", type=int, default=1000, help="validation images (evaluated, not timed)")
    parser.add_argument("--stream", type=int, default=1_000_000, help="generated images streamed; 0: none")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--stream-one", dest="stream_one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.model, args.out)))
        return
    if args.stream_one:
        print(json.dumps(stream_run(args.stream_one)))
        return

    sizes = [int(size) for size in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            subset = make_subset(args.data, size, args.validation, Path(scratch))
            rows.append(run_size(subset, args.model, Path(scratch) / f"cache-{size}"))
            row = rows[-1]
            print(f"{size}: {json.dumps({k: round(v, 1) for k, v in row.items()})}", flush=True)
    lines = [
        "| training images | preparation, cold (s) | preparation, cache built (s) | one epoch (s) "
        "| s per 1,000 images (cold preparation + epoch) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for size, row in zip(sizes, rows):
        per_k = (row["prepare"] + row["epoch"]) / (size / 1000)
        lines.append(
            f"| {size:,} | {row['prepare']:.1f} | {row['prepare_warm']:.1f} | {row['epoch']:.1f} | {per_k:.2f} "
            f"| {row['peak_mb']:.0f} |"
        )
    stream = streamed(args.stream) if args.stream else []
    if stream:
        lines += [
            "",
            f"A stream of {args.stream:,} generated 28-px images through the input pipeline alone (128 px, batch 64):",
            "",
            "| images read | seconds | s per 1,000 images (so far) | peak RSS (MB) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p['images']:,} | {p['seconds']:.0f} | {p['seconds'] / (p['images'] / 1000):.2f} | {p['peak_mb']:.0f} |"
            for p in stream
        ]
    table = "\n".join(lines)
    print("\n" + table)
    if not args.no_record:
        picture = HERE / "scale.png"
        plot(sizes, rows, stream, picture)
        record("### Cost as the data grows", f"{table}\n\n![time and memory against training images](scale.png)")


if __name__ == "__main__":
    main()
