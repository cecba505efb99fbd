"""The `hf-cnn-ft` command line: parses arguments, calls the library, reports results.

Bad input raises `UserError` anywhere below; here it becomes one line on stderr and exit code 2.
Unexpected errors keep their traceback. Heavy libraries (torch, transformers) are imported inside the
handlers, after the recipe and the arguments are checked: `--help` and a bad input answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hf_cnn_ft.cli.tools import TOOL_HANDLERS, add_tool_verbs
from hf_cnn_ft.cli.tune import add_tune_verb, run_tune
from hf_cnn_ft.config.choices import TEST_TIME_FLIPS
from hf_cnn_ft.config.loading import recipe_help
from hf_cnn_ft.config.paths import check_model_location, check_predictions_path, collect_images
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.report import format_report, format_run_report

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
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _train(options: argparse.Namespace, extra: list[str]) -> int:
    from hf_cnn_ft.config.recipe import load_recipe

    overrides = list(extra)
    if options.resume:
        overrides += ["--resume_from_checkpoint", "latest"]
    recipe = load_recipe(options.recipe, overrides)
    from hf_cnn_ft.cli.process import prepare_cpu_process
    from hf_cnn_ft.training.train import train

    prepare_cpu_process(recipe.training.keep_freed_memory)
    result = train(recipe)
    if recipe.training.process_index == 0:
        out = result.output_dir
        print(format_report(result.report, f"\n{result.evaluated_on} results ({result.report['num_samples']} images):"))
        print(f"  {'train time':<16} {result.train_seconds:.1f} s")
        print(f"\nmodel:            {out}")
        print(f"model card:       {out / 'README.md'}")
        print(f"confusion matrix: {out / 'confusion_matrix.png'}")
        if result.push is not None:
            print(f"pushed to:        {result.push.repo_url} ({result.push.revision})")
    return 0


def _compare(options: argparse.Namespace, extra: list[str]) -> int:
    from statistics import fmean

    from hf_cnn_ft.config.recipe import load_recipe

    recipe = load_recipe(options.recipe, extra)
    from hf_cnn_ft.cli.process import prepare_cpu_process
    from hf_cnn_ft.training.compare import compare_models, ranked

    prepare_cpu_process(recipe.training.keep_freed_memory)
    models = [m.strip() for m in options.models.split(",") if m.strip()]
    seeds = [recipe.training.seed + i for i in range(options.seeds)]
    output_dir = Path(recipe.training.output_dir)
    splits = list(range(options.splits)) if options.splits > 0 else None
    candidates = compare_models(recipe, models, seeds, output_dir, splits)
    print(f"\n{'model':<32} {'accuracy':>8} {'macro-F1':>8} {'train s':>8}")
    for c in ranked(candidates):
        if c.ok:
            print(f"{c.model:<32} {fmean(c.accuracy):8.4f} {fmean(c.f1_macro):8.4f} {fmean(c.train_seconds):8.1f}")
        else:
            print(f"{c.model:<32} failed: {c.error}")
    print(f"\nleaderboard: {output_dir / 'leaderboard.md'} (.csv, .png)")
    return 0 if any(c.ok for c in candidates) else EXIT_USER_ERROR


def _lr_find(options: argparse.Namespace, extra: list[str]) -> int:
    from hf_cnn_ft.config.recipe import load_recipe

    recipe = load_recipe(options.recipe, extra)
    from hf_cnn_ft.cli.process import prepare_cpu_process
    from hf_cnn_ft.training.lr_find import find_learning_rate

    prepare_cpu_process(recipe.training.keep_freed_memory)
    result = find_learning_rate(recipe, options.steps, options.start_lr, options.end_lr)
    print(f"suggested learning rate: {result.suggestion:.2e} (steepest fall of the loss)")
    print(f"plot: {result.plot}")
    return 0


def _evaluate(options: argparse.Namespace) -> int:
    check_model_location(options.model_dir)  # a wrong model path is about the model, not the data
    from hf_cnn_ft.evaluation.evaluate import evaluate_model
    from hf_cnn_ft.share.run_dir import data_arguments_for, test_time_flips_for

    model_dir = Path(options.model_dir)
    data_args = data_arguments_for(model_dir, options.data)
    report = evaluate_model(model_dir, data_args, options.split, test_time_flips_for(model_dir, options.tta))
    print(format_report(report, f"{options.split} results ({report['num_samples']} images):"))
    if options.output:
        Path(options.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"metrics: {options.output}")
    return 0


def _predict(options: argparse.Namespace) -> int:
    check_model_location(options.model_dir)
    collect_images(options.inputs)
    if options.output:
        check_predictions_path(Path(options.output))
    from hf_cnn_ft.evaluation.predict import predict_files, write_predictions
    from hf_cnn_ft.share.run_dir import test_time_flips_for

    flips = test_time_flips_for(options.model_dir, options.tta)
    predictions = predict_files(options.model_dir, options.inputs, top_k=options.top_k, test_time_flips=flips)
    for p in predictions:
        if p.error:
            print(f"{p.path}\tunreadable: {p.error}")
        else:
            print(p.path + "\t" + "\t".join(f"{label} {score:.3f}" for label, score in zip(p.labels, p.scores)))
    if options.output:
        write_predictions(predictions, Path(options.output))
    return 0


def _report(options: argparse.Namespace) -> int:
    check_model_location(options.model_dir)
    from hf_cnn_ft.config.sections import ReportArguments
    from hf_cnn_ft.evaluation.model_report import report_model
    from hf_cnn_ft.share.run_dir import data_arguments_for, saved_recipe, test_time_flips_for

    recipe = saved_recipe(options.model_dir)
    settings = recipe.report if recipe else ReportArguments()
    if options.top_losses is not None:
        settings = dataclasses.replace(settings, top_losses=options.top_losses)
    local = Path(options.model_dir).is_dir()
    folder = Path(options.output_dir or (options.model_dir if local else f"report-{Path(options.model_dir).name}"))
    data_args = data_arguments_for(Path(options.model_dir), options.data)
    if options.slice_column:
        data_args = dataclasses.replace(data_args, slice_column=options.slice_column)
    flips = test_time_flips_for(options.model_dir, options.tta)
    report = report_model(options.model_dir, data_args, options.split, folder, settings, flips)
    print(format_run_report(report))
    print(f"report: {folder / 'report.json'} ({', '.join(report['pictures'])})")
    return 0


def _add_tta_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta",
        choices=TEST_TIME_FLIPS,
        help="test-time flips whose logits are averaged; default: augment.test_time_flips of MODEL_DIR/recipe.yaml",
    )


def _push(options: argparse.Namespace) -> int:
    from hf_cnn_ft.share.hub import check_push_access, push_model_dir

    model_dir = Path(options.model_dir)
    kept = f"; nothing was pushed and {model_dir} is intact"
    space = check_push_access(options.space, kept) if options.space else None  # refused: before any upload
    result = push_model_dir(model_dir, options.repo_id, options.private, options.branch, options.commit_message)
    if result.changed:
        print(f"pushed {model_dir} to {result.repo_url} ({result.revision}): {result.commit_url}")
    else:
        print(f"{result.repo_url} ({result.revision}) already holds these files: nothing uploaded")
    if space:
        from hf_cnn_ft.share.space import push_space

        pushed = push_space(space, result.repo_id, options.private, model_dir)
        print(f"demo Space: {pushed.repo_url} ({'updated' if pushed.changed else 'already up to date'})")
    return 0


def _export(options: argparse.Namespace) -> int:
    check_model_location(options.model_dir)
    from hf_cnn_ft.share.export import export_onnx

    images = [Path(p) for p in options.images] if options.images else None
    result = export_onnx(options.model_dir, options.output, options.opset, options.quantize, options.tolerance, images)
    print(
        f"onnx model:        {result.onnx_path}\n"
        f"check:             max |logit difference| {result.max_abs_diff:.2e} on {result.checked_images} images "
        f"(onnxruntime vs PyTorch, tolerance {options.tolerance:g})\n"
        f"preprocessing:     {result.directory / 'preprocessing.json'}"
    )
    if result.quantized_path:
        print(f"int8 model:        {result.quantized_path}")
        if result.accuracy:
            acc = result.accuracy
            print(
                f"validation accuracy: PyTorch {acc['torch']:.4f}, ONNX {acc['onnx']:.4f}, "
                f"int8 {acc['int8']:.4f} ({acc['int8'] - acc['onnx']:+.4f})"
            )
    return 0


def _merge(options: argparse.Namespace) -> int:
    check_model_location(options.adapter_dir)
    from hf_cnn_ft.share.run_dir import merge_adapter_dir

    output = merge_adapter_dir(options.adapter_dir, options.output_dir)
    print(f"merged model directory: {output}")
    return 0


RECIPE_VERBS = ("train", "lr-find", "compare", "tune")


def _add_recipe_verb_options(parser: argparse.ArgumentParser, verb: str) -> None:
    if verb == "train":
        parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
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
        parser.add_argument("--start-lr", type=float, default=1e-7)
        parser.add_argument("--end-lr", type=float, default=1.0)


def _parse_recipe_verb(verb: str, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """train, lr-find and compare take open-ended recipe overrides (--any_recipe_key value): their own few
    options are parsed here, exactly (no abbreviations), and everything else goes to the recipe."""
    recipe = args[0] if args and not args[0].startswith("-") else None
    own = argparse.ArgumentParser(prog=f"hf-cnn-ft {verb}", allow_abbrev=False, add_help=False)
    _add_recipe_verb_options(own, verb)
    options, extra = own.parse_known_args(args[1:] if recipe else args)
    options.verb, options.recipe = verb, recipe
    return options, extra


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-cnn-ft", description="Fine-tune pretrained CNNs on your own images.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    _add_recipe_verbs(verbs)
    _add_run_verbs(verbs)
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


def _add_run_verbs(verbs: argparse._SubParsersAction) -> None:
    """Verbs on a fine-tuned model: report, evaluate, predict, push, export, merge."""
    report = verbs.add_parser(
        "report", help="top losses with Grad-CAM, most confused pairs, calibration and slices of a model"
    )
    report.add_argument("model_dir", help="a run directory or a Hub model id")
    report.add_argument("--data", help="dataset source; default: the one in MODEL_DIR/recipe.yaml")
    report.add_argument("--split", default="test", help="test (default), validation, train, or all")
    report.add_argument("--output_dir", help="where the report goes; default: the run directory itself")
    report.add_argument("--slice_column", help="report accuracy and F1 per value of this metadata column")
    report.add_argument("--top-losses", dest="top_losses", type=int, help="how many wrong images to show")
    _add_tta_option(report)
    evaluate = verbs.add_parser("evaluate", help="evaluate a fine-tuned model on a labelled dataset")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--data", help="dataset source; default: the one in MODEL_DIR/recipe.yaml")
    evaluate.add_argument("--split", default="test", help="test (default), validation, train, or all")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    _add_tta_option(evaluate)

    predict = verbs.add_parser("predict", help="classify image files or folders")
    predict.add_argument("model_dir")
    predict.add_argument("inputs", nargs="+", help="image files and/or folders")
    predict.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=3)
    predict.add_argument("--output", help="write predictions to a .csv or .json file")
    _add_tta_option(predict)

    push = verbs.add_parser("push", help="push a fine-tuned model directory, with its model card, to the Hub")
    push.add_argument("model_dir")
    push.add_argument("repo_id", help="namespace/name (or just name: under the token's user)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--branch", help="push to this branch (created if missing)")
    push.add_argument("--commit-message", "--commit_message", dest="commit_message")
    push.add_argument("--space", metavar="SPACE_REPO", help="also create or update a Gradio Space serving the model")

    export = verbs.add_parser("export", help="export to ONNX (checked with onnxruntime), optionally int8")
    export.add_argument("model_dir", help="a model directory, adapter run or Hub repo id")
    export.add_argument("--format", default="onnx", choices=["onnx"])
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--quantize", choices=["int8"], help="also write a static int8 (QDQ) model")
    export.add_argument("--tolerance", type=float, default=1e-3, help="largest |logit difference| accepted")
    export.add_argument("--output", help="export directory (default: MODEL_DIR/onnx)")
    export.add_argument("--images", nargs="+", help="check on these images (default: the run's validation split)")

    merge = verbs.add_parser("merge", help="merge a peft adapter run into a plain model directory")
    merge.add_argument("adapter_dir")
    merge.add_argument("output_dir")


RECIPE_HANDLERS = {"train": _train, "lr-find": _lr_find, "compare": _compare, "tune": run_tune}
RUN_HANDLERS = {
    "report": _report,
    "evaluate": _evaluate,
    "predict": _predict,
    "push": _push,
    "export": _export,
    "merge": _merge,
}


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


if __name__ == "__main__":
    sys.exit(main())
