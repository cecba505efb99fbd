"""`training.precision: auto` against hand-written loops in each precision, per backbone (issue 31).

For each backbone: a plain PyTorch training loop in float32 and under `torch.autocast` in each lower precision
the device runs natively (bfloat16 on a CPU with AVX-512 BF16 / AMX; bfloat16 and float16, with a loss scaler, on
a CUDA GPU), and `train()` with `precision: auto` (the tool's own choice, by its timed probe), interleaved in one
process, each timed in steady state, all channels_last; then what the probe cost on a demo-size run (the food
recipe) with an empty cache, and on the same run again (cached). Goal: auto at least 0.95x the fastest
hand-written loop for every backbone; the probe under 5% of a demo-size run and nothing on the second.
Appends the tables to benchmarks/RESULTS.md.

    python benchmarks/precision.py --steps 20 --repeats 2
    python benchmarks/precision.py --batch-size 128 --workers 8 --photos 5120 --steps 30 --warmup 6 --no-demo  # GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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

from hf_cnn_ft.config.recipe import build_recipe, load_recipe
from hf_cnn_ft.config.sections import ModelArguments
from hf_cnn_ft.extras.known_weights import import_known_weights
from hf_cnn_ft.models.precision import device_type, native_precisions
from hf_cnn_ft.training.machine import prepare_cpu_process
from hf_cnn_ft.training.train import train

BACKBONES = ("resnet50", "convnext_tiny", "mobilenetv2_100", "tf_efficientnet_lite0")


def hand_written(args: argparse.Namespace, backbone: str, precision: str) -> float:
    model = ModelArguments(model=backbone, pretrained=False, image_size=224)
    return hand_written_throughput(
        args.data, model, args.batch_size, args.steps, args.warmup, precision, workers=args.workers
    )


def tool(args: argparse.Namespace, backbone: str) -> tuple[float, dict]:
    """Images/s of `train()` with precision auto, in steady state, and what it chose."""
    clock = StepClock(args.warmup)
    settings = {
        **TRAINING_ONLY,
        "dataset": str(args.data),
        "model": backbone,
        "pretrained": False,
        "bn": "train",
        "image_size": 224,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-4,
        "max_steps": args.steps,
        "dataloader_num_workers": args.workers,
        "precision": "auto",
        "report_at_end": False,
    }
    with tempfile.TemporaryDirectory() as out:
        train(build_recipe({**settings, "output_dir": out}, "precision benchmark"), callbacks=[clock])
        chosen = json.loads((Path(out) / "metrics.json").read_text())["precision"]
    return clock.timed_steps * args.batch_size / clock.seconds(), chosen


def probe_cost(cache: Path) -> list[tuple[float, float, bool]]:
    """Seconds the probe took and the run's wall time, for the demo recipe with an empty cache, then cached."""
    os.environ["HF_CNN_FT_CACHE"] = str(cache)
    import_known_weights("efficientnet_lite0", cache_dir=Path("data/weights"))
    rows = []
    for _ in range(2):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            recipe = load_recipe(
                "recipes/food-efficientnet-lite0.yaml", values={"output_dir": out, "disable_tqdm": True}
            )
            train(recipe)
            chosen = json.loads((Path(out) / "metrics.json").read_text())["precision"]
        rows.append((chosen["probe_seconds"], time.perf_counter() - started, chosen["cached"]))
    return rows


def compare(args: argparse.Namespace, backbone: str, precisions: list[str]) -> str:
    """One table row: each hand-written loop, `train` with auto, what auto chose and what its probe measured."""
    short = argparse.Namespace(**{**vars(args), "steps": args.warmup + 2})
    hand_written(short, backbone, "fp32")  # one-off work (kernels for these shapes) before the clock
    speeds: dict[str, list[float]] = {what: [] for what in [*precisions, "auto"]}
    for repeat in range(args.repeats):  # interleaved, the order turning each round
        order = list(speeds) if repeat % 2 == 0 else list(reversed(speeds))
        for what in order:
            if what == "auto":
                speed, chosen = tool(args, backbone)
            else:
                speed = hand_written(args, backbone, what)
            speeds[what].append(speed)
    mean = {what: sum(v) / len(v) for what, v in speeds.items()}
    fastest = max(mean[p] for p in precisions)
    loops = " | ".join(f"{mean[p]:.1f} img/s" for p in precisions)
    probed = ", ".join(f"{p} {1000 * s:.0f}" for p, s in chosen["seconds_per_step"].items()) or "-"
    return (
        f"| {backbone} | {loops} | {mean['auto']:.1f} img/s | {chosen['precision']} | {probed} | "
        f"{mean['auto'] / fastest:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of every loop and of train")
    parser.add_argument("--photos", type=int, default=None, help="generated photos (default: 8 batches' worth)")
    parser.add_argument("--no-demo", dest="demo", action="store_false", help="skip the demo-size probe-cost runs")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    prepare_cpu_process()
    root = Path(tempfile.mkdtemp(prefix="precision-bench-"))
    os.environ["HF_CNN_FT_CACHE"] = str(root / "cache")  # the tool's probe starts from nothing
    args.data = make_photos(root / "photos", count=args.photos or 8 * args.batch_size, size=256)
    precisions = native_precisions()
    names = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    loops = " | ".join(f"hand-written {names[p]}" for p in precisions)
    rows = [f"| backbone | {loops} | train, precision auto | auto chose | its probe, ms per step | "
            "auto / fastest loop |", "|---|" + "---|" * (len(precisions) + 4)]  # fmt: skip
    for backbone in args.backbones.split(","):
        rows.append(compare(args, backbone, precisions))
        print(rows[-1], flush=True)
    if args.demo:
        probes = probe_cost(root / "demo-cache")
        rows += ["", "| demo-size run (recipes/food-efficientnet-lite0.yaml) | timing probe | run wall time | share |",
                 "|---|---|---|---|"]  # fmt: skip
        for label, (probe, wall, cached) in zip(("empty cache", "second run"), probes):
            cached_mark = " (cached)" if cached else ""
            rows.append(f"| {label}{cached_mark} | {probe:.2f} s | {wall:.1f} s | {probe / wall:.1%} |")
    table = "\n".join(rows)
    print("\n" + table)
    if not args.no_record:
        heading = f"### precision auto vs hand-written loops, 224 px, batch {args.batch_size}, {args.steps} steps"
        on = torch.cuda.get_device_name() if device_type() == "cuda" else None
        record(heading, table, on and f"{on}, {os.cpu_count()} CPU cores, torch {torch.__version__}")


if __name__ == "__main__":
    main()
