"""The `hf-cnn-ft` command line: parses arguments, calls the library, reports results.

Bad input raises `UserError` anywhere below; here it becomes one line on stderr and exit code 2.
Unexpected errors keep their traceback. Heavy libraries (torch, transformers) are imported inside the
handlers, after the recipe and the arguments are checked: `--help` and a bad input answer at once.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hf_cnn_ft.cli.flags import FlagParser
from hf_cnn_ft.cli.run_verbs import RUN_HANDLERS, add_run_verbs
from hf_cnn_ft.cli.tools import TOOL_HANDLERS, add_tool_verbs
from hf_cnn_ft.cli.tune import add_tune_verb, run_tune
from hf_cnn_ft.config.paths import check_output_folder
from hf_cnn_ft.config.reading import recipe_help
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.report import format_report

EXIT_USER_ERROR = 2


def _not_printed_yet(record: logging.LogRecord) -> bool:
    """False for records that a library's own handler (huggingface_hub, transformers, datasets) has printed
    already on their way up to the root logger."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        if logger.handlers:
            return False
        if not logger.propagate:
            break
        logger = logger.parent
    return True


def _configure_logging() -> None:
    if not logging.root.handlers:  # like logging.basicConfig, which leaves a configured root alone
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_not_printed_yet)
        logging.root.addHandler(handler)
        logging.root.setLevel(logging.WARNING)
    logging.getLogger("hf_cnn_ft").setLevel(logging.INFO)
    # torchao (the quantizer of the executorch extra; transformers imports it when installed) registers enums
    # that torch's pytree calls deprecated, two warnings on every command that are no user's concern.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _train(options: argparse.Namespace, extra: list[str]) -> int:
    from hf_cnn_ft.config.recipe import load_recipe

    overrides = list(extra)
    if options.resume:
        overrides += ["--resume_from_checkpoint", "latest"]
    if options.overwrite:
        overrides += ["--overwrite_output_dir", "true"]
    recipe = load_recipe(options.recipe, overrides)
    from hf_cnn_ft.training.machine import prepare_cpu_process
    from hf_cnn_ft.training.train import train

    prepare_cpu_process(recipe.training.keep_freed_memory)
    result = train(recipe)
    if recipe.training.process_index == 0:
        out = result.output_dir
        print(format_report(result.report, f"\n{result.evaluated_on} results ({result.report['num_samples']} images):"))
        print(f"  {'train time':<16} {result.train_seconds:.1f} s")
        print(f"\nmodel:            {out}")
        print(f"model card:       {out / 'README.md'}")
        if (out / "confusion_matrix.png").exists():  # a multi-label run has none
            print(f"confusion matrix: {out / 'confusion_matrix.png'}")
        if result.push is not None:
            print(f"pushed to:        {result.push.repo_url} ({result.push.revision})")
    return 0


def _compare(options: argparse.Namespace, extra: list[str]) -> int:
    from statistics import fmean

    from hf_cnn_ft.config.recipe import load_recipe

    recipe = load_recipe(options.recipe, extra)
    check_output_folder(recipe.training.output_dir, "training.output_dir")
    from hf_cnn_ft.training.compare import compare_models, ranked
    from hf_cnn_ft.training.machine import prepare_cpu_process

    prepare_cpu_process(recipe.training.keep_freed_memory)
    models = [m.strip() for m in options.models.split(",") if m.strip()]
    seeds = [recipe.training.seed + i for i in range(options.seeds)]
    output_dir = Path(recipe.training.output_dir)
    splits = list(range(options.splits)) if options.splits > 0 else None
    candidates = compare_models(recipe, models, seeds, output_dir, splits)
    score = next((c.metric for c in candidates if c.ok), "accuracy")
    print(f"\n{'model':<32} {score:>8} {'macro-F1':>8} {'train s':>8}")
    for c in ranked(candidates):
        if c.ok:
            print(f"{c.model:<32} {fmean(c.scores):8.4f} {fmean(c.f1_macro):8.4f} {fmean(c.train_seconds):8.1f}")
        else:
            print(f"{c.model:<32} failed: {c.error}")
    print(f"\nleaderboard: {output_dir / 'leaderboard.md'} (.csv, .png)")
    return 0 if any(c.ok for c in candidates) else EXIT_USER_ERROR


def _lr_find(options: argparse.Namespace, extra: list[str]) -> int:
    from hf_cnn_ft.config.recipe import load_recipe

    recipe = load_recipe(options.recipe, extra)
    check_output_folder(recipe.training.output_dir, "training.output_dir")
    from hf_cnn_ft.training.lr_find import find_learning_rate
    from hf_cnn_ft.training.machine import prepare_cpu_process

    prepare_cpu_process(recipe.training.keep_freed_memory)
    result = find_learning_rate(recipe, options.steps, options.start_lr, options.end_lr)
    print(f"suggested learning rate: {result.suggestion:.2e} (steepest fall of the loss)")
    print(f"plot: {result.plot}")
    return 0


RECIPE_VERBS = ("train", "lr-find", "compare", "tune")


def _add_recipe_verb_options(parser: argparse.ArgumentParser, verb: str) -> None:
    if verb == "train":
        parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the run in output_dir, once the new one has finished (without it, a folder holding a "
            "run is refused)",
        )
    elif verb == "compare":
        parser.add_argument("--models", required=True, help="comma-separated backbones: resnet50,convnext_tiny,...")
        parser.add_argument("--seeds", type=int, default=1, help="runs per backbone (seeds seed, seed+1, ...)")
        parser.add_argument(
            "--splits",
            type=int,
            default=5,
            help="run on K resampled stratified splits (split seeds 0..K-1, data.resplit) and give 95%% intervals "
            "(default 5: one test split is one draw of the images); 0: the recipe's own split only",
        )
    elif verb == "lr-find":
        parser.add_argument("--steps", type=int, default=100)
        parser.add_argument("--start_lr", type=float, default=1e-7)
        parser.add_argument("--end_lr", type=float, default=1.0)


def _parse_recipe_verb(verb: str, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """train, lr-find and compare take open-ended recipe overrides (--any_recipe_key value): their own few
    options are parsed here, exactly (no abbreviations), and everything else goes to the recipe."""
    recipe = args[0] if args and not args[0].startswith("-") else None
    own = FlagParser(prog=f"hf-cnn-ft {verb}", allow_abbrev=False, add_help=False)
    _add_recipe_verb_options(own, verb)
    options, extra = own.parse_known_args(args[1:] if recipe else args)
    options.verb, options.recipe = verb, recipe
    return options, extra


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog="hf-cnn-ft", description="Fine-tune pretrained CNNs on your own images.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    _add_recipe_verbs(verbs)
    add_run_verbs(verbs)
    add_tool_verbs(verbs)
    return parser


def _add_recipe_verbs(verbs: argparse._SubParsersAction) -> None:
    """train, lr-find, compare and tune: a recipe and its overrides."""
    train = verbs.add_parser(
        "train",
        help="fine-tune as a recipe says",
        description="Fine-tune as RECIPE says. Any recipe key can follow as an override: --learning_rate 3e-4.",
        epilog=recipe_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("recipe", nargs="?", help="recipe YAML file (optional if every key comes as an override)")
    _add_recipe_verb_options(train, "train")

    lr_find = verbs.add_parser(
        "lr-find",
        help="learning-rate range test: plot and a suggested rate",
        description="Runs the learning-rate range test for the phase the Trainer would run; recipe overrides allowed.",
    )
    lr_find.add_argument("recipe", nargs="?")
    _add_recipe_verb_options(lr_find, "lr-find")

    compare = verbs.add_parser(
        "compare",
        help="fine-tune several backbones with one recipe; leaderboard.md/.csv/.png",
        description="Fine-tunes each of --models with RECIPE (same data, splits and seeds) and ranks them. "
        "Recipe overrides allowed; each candidate runs in OUTPUT_DIR/MODEL/seedN.",
    )
    compare.add_argument("recipe", nargs="?")
    _add_recipe_verb_options(compare, "compare")
    add_tune_verb(verbs)


RECIPE_HANDLERS = {"train": _train, "lr-find": _lr_find, "compare": _compare, "tune": run_tune}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    parser = build_parser()
    if argv and argv[0] in RECIPE_VERBS and not {"-h", "--help"} & set(argv):
        options, extra = _parse_recipe_verb(argv[0], argv[1:])
    else:
        options, extra = parser.parse_args(argv), []
    try:
        if options.verb in RECIPE_VERBS:
            return RECIPE_HANDLERS[options.verb](options, extra)
        return {**RUN_HANDLERS, **TOOL_HANDLERS}[options.verb](options)
    except UserError as exc:
        print(f"hf-cnn-ft: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def run() -> None:
    """The `hf-cnn-ft` command (and `python -m hf_cnn_ft`): `main`, then a quick exit."""
    exit_quickly(main())


def exit_quickly(code: int) -> None:
    """Ends the process once its work is done. Tearing down the interpreter's modules (torch, transformers and
    what they import) takes about 2 s on a small CPU; this runs the exit handlers and flushes the output,
    then ends without that teardown."""
    logging.shutdown()
    atexit._run_exitfuncs()  # what a normal exit runs first: accelerate's and datasets' clean-ups
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
