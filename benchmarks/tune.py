"""What `hf-cnn-ft tune` finds in a time budget, and what the recipe it found scores on the test split.

Runs the search from RECIPE with its strategy's default space (no hand-picked ranges) for --timeout
minutes, then trains the best recipe with --seeds training seeds on the recipe's own split and reports
its test figures (the search itself never reads the test split). Appends the table, the command and
the machine to benchmarks/RESULTS.md.

With --splits K, the search starts from the defaults instead (`hf-cnn-ft train --dataset D --model M`,
the recipe's data and backbone and nothing else) on each of K resampled splits (data.resplit, split
seeds 0..K-1, or K seeds from --first-split), and the recipe it found, trained once more by `tune`
itself and tested once, is paired with the defaults trained on the same split and seed.

    python benchmarks/tune.py recipes/food-mobilenetv2.yaml --timeout 15
    python benchmarks/tune.py recipes/elpv-defects-mobilenetv2.yaml --timeout 40 --class defective
    python benchmarks/tune.py recipes/food-efficientnet-lite0.yaml --timeout 15 --splits 5
    python benchmarks/tune.py recipes/food-fine-efficientnet-lite0.yaml --timeout 15 --splits 3 --first-split 2
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from accuracy import Runs, defaults_of, ensure_offline_inputs, header, measure, rows
from common import machine, record

from hf_cnn_ft.api import prepare_cpu_process
from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.training.tuning.tune import TuneResult, tune


def search_line(result: TuneResult, minutes: float, where: str) -> str:
    done = ", ".join(f"{count} {state}" for state, count in result.trials.items())
    return (
        f"{where}: {done} trials in {minutes:.1f} min (best trained again and tested included); "
        f"chose trial {result.best_trial}, validation {result.metric} {result.best_validation:.4f}"
    )


def on_the_recipe_split(args: argparse.Namespace, overrides: list[str]) -> None:
    """The search from the recipe file, its best recipe trained again with --seeds seeds on the recipe's split."""
    output_dir = Path("outputs") / f"tune-{args.recipe.stem}"
    budget = ["--timeout", str(args.timeout), "--trials", "null", "--output_dir", str(output_dir)]
    started = time.perf_counter()
    result = tune(args.recipe, [*overrides, *budget])
    searched = time.perf_counter() - started
    best_recipe = output_dir / "best_recipe.yaml"
    runs = measure("recipe", best_recipe, [], [None], args.seeds, args.class_name)
    runs.name = f"best of the search ({args.recipe.name}, {args.timeout:g} min)"

    lines = [
        search_line(result, searched / 60, "Search"),
        "",
        *header(args.class_name),
        *rows(runs, None, args.class_name),
        "",
        "The best recipe:",
        "",
        "```yaml",
        best_recipe.read_text().strip(),
        "```",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_record:
        record(f"### tune, {args.timeout:g} minutes from {args.recipe.name}", text)


def from_the_defaults(args: argparse.Namespace, overrides: list[str]) -> None:
    """On each resampled split: the search from the defaults, and the defaults themselves, paired."""
    defaults = defaults_of(load_recipe(args.recipe))
    found = Runs(f"best of a {args.timeout:g}-minute search from the defaults")
    searches: list[str] = []
    split_seeds = list(range(args.first_split, args.first_split + args.splits))
    for split in split_seeds:
        output_dir = Path("outputs") / f"tune-{args.recipe.stem}-defaults" / f"split-{split}"
        values = {**defaults, "resplit": True, "split_seed": split, "seed": 0, "output_dir": str(output_dir)}
        values |= {"timeout": args.timeout, "trials": None}
        started = time.perf_counter()
        result = tune(None, overrides, values)
        minutes = (time.perf_counter() - started) / 60
        searches.append(search_line(result, minutes, f"split {split}"))
        print(searches[-1], f"test accuracy {result.report['accuracy']:.3f}", flush=True)
        found.splits.append(split)
        found.reports.append(result.report)
        found.seconds.append(60 * minutes)
    baseline = measure("defaults", args.recipe, overrides, split_seeds, 1, args.class_name)

    lines = [
        *header(args.class_name, "time per run"),
        *rows(baseline, None, args.class_name),
        *rows(found, None, args.class_name),
        rows(baseline, found, args.class_name)[-1],
        "",
        *[f"- {line}" for line in searches],
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_record:
        heading = f"### tune, {args.timeout:g} minutes from the defaults on {args.recipe.name}'s data and backbone"
        note = "mean ± std over the splits [95% interval]; the search's time includes its retrained best"
        first, last = split_seeds[0], split_seeds[-1]
        splits = (
            f"1 resampled split (split seed {first})"
            if first == last
            else (f"{args.splits} resampled splits (split seeds {first}-{last})")
        )
        record(f"{heading}, {splits}", text, f"{machine()}; {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--timeout", type=float, default=15, help="minutes of search")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds of the best recipe, on the recipe's split")
    parser.add_argument("--splits", type=int, default=0, help="resampled splits, each searched from the defaults")
    parser.add_argument("--first-split", type=int, default=0, help="split seed of the first resampled split")
    parser.add_argument("--class", dest="class_name", help="also report this class's F1 (e.g. defective)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("hf_cnn_ft").setLevel(logging.INFO)
    prepare_cpu_process()
    ensure_offline_inputs(load_recipe(args.recipe))
    if args.splits:
        from_the_defaults(args, overrides)
    else:
        on_the_recipe_split(args, overrides)


if __name__ == "__main__":
    main()
