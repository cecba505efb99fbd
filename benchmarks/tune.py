"""What `hf-cnn-ft tune` finds in a time budget, and what the recipe it found scores on the test split.

Runs the search from RECIPE with its strategy's default space (no hand-picked ranges) for --timeout
minutes, then trains the best recipe with --seeds training seeds on the recipe's own split and reports
its test figures (the search itself never reads the test split). Appends the table, the command and
the machine to benchmarks/RESULTS.md.

    python benchmarks/tune.py recipes/food-mobilenetv2.yaml --timeout 15
    python benchmarks/tune.py recipes/elpv-defects-mobilenetv2.yaml --timeout 40 --class defective
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from accuracy import ensure_offline_inputs, measure, rows
from common import record

from hf_cnn_ft.api import prepare_cpu_process
from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.training.tuning.tune import tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--timeout", type=float, default=15, help="minutes of search")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds of the best recipe, on the recipe's split")
    parser.add_argument("--class", dest="class_name", help="also report this class's F1 (e.g. defective)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("hf_cnn_ft").setLevel(logging.INFO)
    prepare_cpu_process()
    ensure_offline_inputs(load_recipe(args.recipe))

    output_dir = Path("outputs") / f"tune-{args.recipe.stem}"
    budget = ["--timeout", str(args.timeout), "--trials", "null", "--output_dir", str(output_dir)]
    started = time.perf_counter()
    result = tune(args.recipe, [*overrides, *budget])
    searched = time.perf_counter() - started
    best_recipe = output_dir / "best_recipe.yaml"
    runs = measure("recipe", best_recipe, [], [None], args.seeds, args.class_name)
    runs.name = f"best of the search ({args.recipe.name}, {args.timeout:g} min)"

    figures = ["test accuracy", "macro-F1"] + ([f"{args.class_name} F1"] if args.class_name else [])
    done = ", ".join(f"{count} {state}" for state, count in result.trials.items())
    lines = [
        f"Search: {done} trials; {searched / 60:.1f} min in all (best recipe trained again and tested included).",
        f"Best: trial {result.best_trial}, validation {result.metric} {result.best_validation:.4f}.",
        "",
        f"| run | {' | '.join(figures)} | runs | training time |",
        "|---" * (len(figures) + 3) + "|",
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


if __name__ == "__main__":
    main()
