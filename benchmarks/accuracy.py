"""Test accuracy of recipes over resampled splits and training seeds, beside the plain linear probe and the defaults.

One image of a ~100-image test split is one point of accuracy, and one split is one draw of the images:
each recipe runs on --splits K stratified re-draws of its dataset (data.resplit with split seeds 0..K-1,
the dataset's own split sizes) times --seeds S training seeds. The table gives mean ± std over the runs
and a 95% interval over the split means. On the same splits and seeds, --probe measures the plain linear
probe (the recipe's data and input size, strategy linear_probe, nothing else) and --defaults what
`hf-cnn-ft train --dataset D --model M` does with every other setting at its default; the recipe's
difference to each is paired run by run, with its own interval. Overrides after `--` apply to every row.
Appends the table, the command and the machine to benchmarks/RESULTS.md.

    python benchmarks/accuracy.py recipes/food-efficientnet-lite0.yaml --splits 5 --probe --defaults
    python benchmarks/accuracy.py recipes/elpv-defects-mobilenetv2.yaml --class defective --probe
    python benchmarks/accuracy.py recipes/food-mobilenetv2.yaml --splits 0 --seeds 3   # the shipped split
    python benchmarks/accuracy.py recipes/elpv-defects-mobilenetv2.yaml --no-recipe --probe --defaults
    python benchmarks/accuracy.py recipes/elpv-defects-mobilenetv2.yaml --no-recipe --defaults --split-seeds 2,3,4
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import machine, record  # benchmarks/ is on the path when run as a script

from hf_cnn_ft.config.recipe import Recipe, load_recipe
from hf_cnn_ft.evaluation.intervals import mean_interval, paired_difference
from hf_cnn_ft.extras.known_weights import KNOWN_WEIGHTS, import_known_weights
from hf_cnn_ft.extras.offline_data import prepare_dataset
from hf_cnn_ft.training.machine import prepare_cpu_process
from hf_cnn_ft.training.train import train

INPUT_KEYS = ("pretrained", "weights", "model_revision", "image_size", "crop_pct", "crop_mode")


def ensure_offline_inputs(recipe: Recipe) -> None:
    """Fetches the offline dataset and weights a recipe points at, if they are not there yet."""
    dataset = Path(recipe.data.dataset or "")
    if dataset.parent == Path("data") and not dataset.exists():
        prepare_dataset(dataset.name, dataset.parent)
    model = Path(recipe.model.model or "")
    if model.parts[:2] == ("data", "weights") and model.parts[2] in KNOWN_WEIGHTS and not model.exists():
        import_known_weights(model.parts[2], cache_dir=Path("data/weights"))


def defaults_of(recipe: Recipe, with_input: bool = False) -> dict[str, Any]:
    """The recipe's data and backbone and nothing else (with its input size and crop if `with_input`)."""
    values = {key: value for key, value in recipe.to_dict()["data"].items() if value is not None}
    values["model"] = recipe.model.model
    if with_input:
        values.update({key: getattr(recipe.model, key) for key in INPUT_KEYS if getattr(recipe.model, key) is not None})
    return values


def probe_of(path: Path, **signal: Any) -> tuple[None, dict[str, Any]]:
    """The plain linear probe on the recipe's data and input, with `signal` settings on top (none: labels alone)."""
    base = {**defaults_of(load_recipe(path), with_input=True), "strategy": "linear_probe", "unlabeled_method": "none"}
    return None, {**base, **signal}


def teachers_of(path: Path) -> list[str]:
    """The offline backbones other than the recipe's own, as its ensemble teacher."""
    own = load_recipe(path).model.model
    return [
        str(import_known_weights(name, cache_dir=Path("data/weights")))
        for name in KNOWN_WEIGHTS
        if str(Path("data/weights") / name / "model") != own
    ]


# What each row trains: a recipe file (or none) and settings on top of it (and of the command's overrides).
VARIANTS: dict[str, Callable[[Path], tuple[Path | None, dict[str, Any]]]] = {
    "recipe": lambda path: (path, {}),
    "linear probe": probe_of,
    "defaults": lambda path: (None, defaults_of(load_recipe(path))),
    # Signal beyond the labels (issue 30): each alone on the probe, then with the fine-tuning phase.
    "fixmatch probe": lambda path: probe_of(path, unlabeled_method="fixmatch"),
    "flexmatch probe": lambda path: probe_of(path, unlabeled_method="flexmatch"),
    "pseudo-label probe": lambda path: probe_of(path, unlabeled_method="pseudo_label"),
    "teacher probe": lambda path: probe_of(path, teachers=teachers_of(path), unlabeled_method="auto"),
    "co-tuning": lambda path: (None, {**defaults_of(load_recipe(path)), "co_tuning_weight": 1.0}),
    "teacher fine-tuned": lambda path: (None, {**defaults_of(load_recipe(path)), "teachers": teachers_of(path)}),
}


@dataclass
class Runs:
    """Every run of one variant: its split seed and training seed, report and cost."""

    name: str
    splits: list[int] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)
    alone: list[dict] = field(default_factory=list)  # without test-time flips, when the recipe uses them
    seconds: list[float] = field(default_factory=list)
    trainable: list[float] = field(default_factory=list)

    def figure(self, key: str, class_name: str | None = None) -> list[float]:
        return [report["per_class"][class_name]["f1"] if class_name else report[key] for report in self.reports]


def run_once(path: Path | None, settings: dict[str, Any], overrides: list[str], out: str) -> tuple[dict, dict]:
    result = train(load_recipe(path, overrides, {**settings, "output_dir": out, "disable_tqdm": True}))
    return result.report, json.loads((Path(out) / "metrics.json").read_text()) | {"seconds": result.train_seconds}


def measure(
    variant: str, path: Path, overrides: list[str], splits: list[int | None], seeds: int, class_name: str | None
) -> Runs:
    runs = Runs(variant)
    recipe_path, settings = VARIANTS[variant](path)
    for split in splits:
        for seed in range(seeds):
            resampled = {} if split is None else {"resplit": True, "split_seed": split}
            with tempfile.TemporaryDirectory() as out:
                report, metrics = run_once(recipe_path, {**settings, **resampled, "seed": seed}, overrides, out)
            runs.splits.append(split or 0)
            runs.reports.append(report)
            runs.seconds.append(metrics["seconds"])
            if metrics.get("without_test_time_augmentation"):
                runs.alone.append(metrics["without_test_time_augmentation"])
            if peft := metrics.get("peft"):
                runs.trainable.append(peft["trainable_parameters"] / peft["total_parameters"])
            line = f"accuracy {report['accuracy']:.3f}, macro-F1 {report['f1_macro']:.3f}"
            if class_name:
                line += f", {class_name} F1 {report['per_class'][class_name]['f1']:.3f}"
            where = "the shipped split" if split is None else f"split {split}"
            print(f"{variant}, {where}, seed {seed}: {line}, {metrics['seconds']:.0f} s", flush=True)
    return runs


def rows(runs: Runs, recipe_runs: Runs | None, class_name: str | None) -> list[str]:
    """The variant's row and, for a baseline, the recipe's paired difference to it."""
    keys = [("accuracy", None), ("f1_macro", None)] + ([("f1", class_name)] if class_name else [])
    cells = [str(mean_interval(runs.figure(k, c), runs.splits)) for k, c in keys]
    extra = f" {100 * statistics.fmean(runs.trainable):.1f}% trainable (peft) |" if runs.trainable else ""
    lines = [f"| {runs.name} | {' | '.join(cells)} | {len(runs.reports)} | {statistics.fmean(runs.seconds):.0f} s |"]
    lines[0] += extra
    if runs.alone:
        alone = Runs(f"{runs.name}, the model alone (no test-time flips)", runs.splits, runs.alone)
        cells = [str(mean_interval(alone.figure(k, c), alone.splits)) for k, c in keys]
        lines.append(f"| {alone.name} | {' | '.join(cells)} | {len(alone.reports)} | same runs |")
    if recipe_runs is not None:
        cells = [paired_difference(recipe_runs.figure(k, c), runs.figure(k, c), runs.splits).signed() for k, c in keys]
        lines.append(f"| {recipe_runs.name} − {runs.name} (paired) | {' | '.join(cells)} | {len(runs.reports)} | |")
    return lines


def header(class_name: str | None, time_column: str = "training time") -> list[str]:
    """The two header lines of a table of `rows`."""
    figures = ["test accuracy", "macro-F1"] + ([f"{class_name} F1"] if class_name else [])
    return [f"| run | {' | '.join(figures)} | runs | {time_column} |", "|---" * (len(figures) + 3) + "|"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--splits", type=int, default=5, help="resampled splits; 0: the dataset's shipped split")
    parser.add_argument(
        "--split-seeds",
        type=lambda text: [int(seed) for seed in text.split(",")],
        help="e.g. 2,3,4 instead of --splits",
    )
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per split")
    parser.add_argument("--probe", action="store_true", help="also the plain linear probe on the same splits")
    parser.add_argument("--defaults", action="store_true", help="also the defaults on the same splits")
    parser.add_argument("--no-recipe", action="store_true", help="only the baselines, paired against the first")
    parser.add_argument(
        "--variants",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=[],
        help=f"more rows, comma-separated: {', '.join(list(VARIANTS)[3:])}",
    )
    parser.add_argument("--label", default="", help="what distinguishes this run (e.g. 'random init')")
    parser.add_argument("--class", dest="class_name", help="also report this class's F1 (e.g. defective)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    logging.basicConfig(level=logging.WARNING)
    prepare_cpu_process()  # what the command line does before training

    splits: list[int | None] = args.split_seeds or (list(range(args.splits)) if args.splits > 0 else [None])
    variants = ["recipe"] * (not args.no_recipe) + ["linear probe"] * args.probe + ["defaults"] * args.defaults
    variants += args.variants
    table: list[str] = []
    for path in args.recipes:
        ensure_offline_inputs(load_recipe(path))
        measured = [measure(variant, path, overrides, splits, args.seeds, args.class_name) for variant in variants]
        if not args.no_recipe:
            measured[0].name = f"{path.name} {args.label}".strip()
        table += rows(measured[0], None, args.class_name)
        for runs in measured[1:]:
            table += rows(runs, measured[0], args.class_name)

    text = "\n".join([*header(args.class_name), *table])
    print("\n" + text)
    if not args.no_record:
        over = f"{len(splits)} resampled splits" if splits != [None] else "the shipped split"
        note = "mean ± std over the runs [95% interval over the split means]"
        record(f"### Accuracy over {over} x {args.seeds} seed(s)", text, f"{machine()}; {note}")


if __name__ == "__main__":
    main()
