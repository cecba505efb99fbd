"""`hf-cnn-ft tune RECIPE [--trials N] [--timeout MINUTES] [--storage URL] [--study NAME] [--any_recipe_key V]`.

The options are the recipe's `tune` keys, given as overrides like any other key; the search itself is
`hf_cnn_ft.training.tuning`.
"""

from __future__ import annotations

import argparse

from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.report import format_report

DESCRIPTION = """Searches the recipe's space (its `tune.space`, or its strategy's default space) with Optuna:
TPE sampling, pruning on per-epoch validation scores, every trial judged on the validation split only.
Then trains the best recipe again into OUTPUT_DIR/best and evaluates it once on the test split.
OUTPUT_DIR gets trials.csv, best_recipe.yaml, pictures of the search, and the study journal.
Run the same command again to resume; run it in several shells (same --storage) to search in parallel.

  --trials N          trials in all, over every worker (default 20)
  --timeout MINUTES   this worker starts no trial after MINUTES
  --storage URL       a journal file (workers on one machine) or postgresql://user@host/db (many machines)
  --study NAME        the study's name in the storage (default: the output directory's name)
  --pruner P          median (default), halving or none
  --launcher CMD      run each trial as `CMD -m hf_cnn_ft train TRIAL_RECIPE`, e.g. "accelerate launch"
Any other recipe key is an override too: --output_dir outputs/search."""


def add_tune_verb(verbs: argparse._SubParsersAction) -> None:
    tune = verbs.add_parser(
        "tune",
        help="search the recipe space (Optuna), then train and test the best recipe",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_argument("recipe", nargs="?", help="recipe YAML file, optionally with a tune: section")


def run_tune(options: argparse.Namespace, extra: list[str]) -> int:
    from hf_cnn_ft.training.machine import prepare_cpu_process

    try:
        from hf_cnn_ft.training.tuning.tune import tune
    except ModuleNotFoundError as exc:
        if exc.name != "optuna":
            raise
        raise UserError("tune needs Optuna: pip install 'hf-cnn-ft[tune]'") from None

    prepare_cpu_process()
    result = tune(options.recipe, extra)
    done = ", ".join(f"{count} {state}" for state, count in result.trials.items())
    print(f"\nstudy: {done} ({result.ran_here} run by this worker)")
    print(f"best: trial {result.best_trial}, validation {result.metric} {result.best_validation:.4f}")
    samples = result.report["num_samples"]
    print(
        format_report(result.report, f"\nthe best recipe, trained again, on {result.evaluated_on} ({samples} images):")
    )
    print(f"\nbest recipe:  {result.output_dir / 'best_recipe.yaml'}")
    print(f"best model:   {result.best_dir} (model card: README.md)")
    print(f"every trial:  {result.output_dir / 'trials.csv'}")
    return 0
