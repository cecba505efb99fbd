"""Test accuracy of recipes over several seeds, on the fixed splits of the offline datasets.

One image of a ~100-image test split is one point of accuracy, so single runs mislead: each
recipe runs once per seed and the table reports mean ± std. Appends the table, the command and
the machine to benchmarks/RESULTS.md.

    python benchmarks/accuracy.py recipes/food-efficientnet-lite0.yaml --seeds 3
    python benchmarks/accuracy.py recipes/food-efficientnet-lite0.yaml --label "random init" -- --pretrained false
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hf_cnn_ft.cli.process import prepare_cpu_process
from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.extras.known_weights import KNOWN_WEIGHTS, import_known_weights
from hf_cnn_ft.extras.offline_data import prepare_dataset
from hf_cnn_ft.training.train import train

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    threads = torch.get_num_threads()
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {threads} threads"


def ensure_offline_inputs(recipe_path: Path) -> None:
    """Fetches the offline dataset and weights a recipe points at, if they are not there yet."""
    recipe = load_recipe(recipe_path)
    dataset = Path(recipe.data.dataset or "")
    if dataset.parent == Path("data") and not dataset.exists():
        prepare_dataset(dataset.name, dataset.parent)
    model = Path(recipe.model.model or "")
    if model.parts[:2] == ("data", "weights") and model.parts[2] in KNOWN_WEIGHTS and not model.exists():
        import_known_weights(model.parts[2], cache_dir=Path("data/weights"))


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def summary(report: dict, class_name: str | None) -> str:
    text = f"accuracy {report['accuracy']:.3f}, macro-F1 {report['f1_macro']:.3f}"
    return text + (f", {class_name} F1 {report['per_class'][class_name]['f1']:.3f}" if class_name else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--label", default="", help="what distinguishes this run (e.g. 'random init')")
    parser.add_argument("--class", dest="class_name", help="also report this class's F1 (e.g. defective)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    logging.basicConfig(level=logging.WARNING)
    prepare_cpu_process()  # what the command line does before training

    rows = []
    for recipe_path in args.recipes:
        ensure_offline_inputs(recipe_path)
        accuracy, f1, class_f1, seconds, trainable = [], [], [], [], []
        alone: list[dict] = []  # the model without test-time flips, when the recipe uses them
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as out:
                recipe = load_recipe(
                    recipe_path, [*overrides, "--seed", str(seed), "--output_dir", out, "--disable_tqdm", "true"]
                )
                result = train(recipe)
                metrics = json.loads((Path(out) / "metrics.json").read_text())
            peft = metrics.get("peft")
            if metrics.get("without_test_time_augmentation"):
                alone.append(metrics["without_test_time_augmentation"])
            report = result.report
            if peft:
                trainable.append(peft["trainable_parameters"] / peft["total_parameters"])
            accuracy.append(report["accuracy"])
            f1.append(report["f1_macro"])
            seconds.append(result.train_seconds)
            if args.class_name:
                class_f1.append(report["per_class"][args.class_name]["f1"])
            print(
                f"{recipe_path.name} seed {seed}: {summary(report, args.class_name)}, {result.train_seconds:.0f} s",
                flush=True,
            )
            if alone:
                print(f"  the model alone, without test-time flips: {summary(alone[-1], args.class_name)}", flush=True)
        name = f"{recipe_path.name} {args.label}".strip()
        row = f"| {name} | {mean_std(accuracy)} | {mean_std(f1)} |"
        row += f" {mean_std(class_f1)} |" if args.class_name else " – |"
        row += f" {statistics.mean(seconds):.0f} s |"
        if trainable:
            row += f" {100 * statistics.mean(trainable):.1f}% trainable (peft) |"
        rows.append(row)
        if alone:
            row = f"| {name}, the model alone (no test-time flips) |"
            row += f" {mean_std([r['accuracy'] for r in alone])} | {mean_std([r['f1_macro'] for r in alone])} |"
            if args.class_name:
                row += f" {mean_std([r['per_class'][args.class_name]['f1'] for r in alone])} |"
            else:
                row += " – |"
            rows.append(row + " same run |")

    class_header = f"{args.class_name} F1" if args.class_name else "class F1"
    table = "\n".join(
        [f"| recipe | test accuracy | macro-F1 | {class_header} | training time |", "|---|---|---|---|---|", *rows]
    )
    print("\n" + table)
    if not args.no_record:
        command = "python benchmarks/accuracy.py " + shlex.join(sys.argv[1:])
        stamp = time.strftime("%Y-%m-%d")
        with RESULTS.open("a") as handle:
            handle.write(
                f"\n### Accuracy, {args.seeds} seeds ({stamp})\n\n`{command}`  \nMachine: {machine()}\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
