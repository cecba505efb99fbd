"""The verbs on a fine-tuned model: report, evaluate, predict, push, export, merge. Each checks the model and
the output path it names before any work, then calls the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hf_cnn_ft.config.choices import TEST_TIME_FLIPS
from hf_cnn_ft.config.paths import (
    check_model_location,
    check_output_file,
    check_output_folder,
    check_predictions_path,
    collect_images,
)
from hf_cnn_ft.evaluation.report import format_report, format_run_report


def _evaluate(options: argparse.Namespace) -> int:
    check_model_location(options.model_dir)  # a wrong model path is about the model, not the data
    if options.unknown:
        collect_images(options.unknown)
    if options.output:
        check_output_file(options.output, "--output")
    from hf_cnn_ft.evaluation.evaluate import evaluate_model
    from hf_cnn_ft.share.run_dir import data_arguments_for, test_time_flips_for

    model_dir = Path(options.model_dir)
    data_args = data_arguments_for(model_dir, options.data)
    flips = test_time_flips_for(model_dir, options.tta)
    report = evaluate_model(model_dir, data_args, options.split, flips, options.unknown)
    print(format_report(report, f"{options.split} results ({report['num_samples']} images):"))
    if options.output:
        Path(options.output).parent.mkdir(parents=True, exist_ok=True)
        Path(options.output).write_text(json.dumps(report, indent=2) + "\n")
        print(f"metrics: {options.output}")
    return 0


def _predict(options: argparse.Namespace) -> int:
    check_model_location(options.model_dir)
    collect_images(options.inputs)
    if options.output:
        check_predictions_path(Path(options.output))
        check_output_file(options.output, "--output")
    from hf_cnn_ft.evaluation.predict import predict_files, write_predictions
    from hf_cnn_ft.share.run_dir import test_time_flips_for

    flips = test_time_flips_for(options.model_dir, options.tta)
    predictions = predict_files(options.model_dir, options.inputs, top_k=options.top_k, test_time_flips=flips)
    for p in predictions:
        if p.error:
            print(f"{p.path}\tunreadable: {p.error}")
        else:
            line = p.path + "\t" + "\t".join(f"{label} {score:.3f}" for label, score in zip(p.labels, p.scores))
            if p.label_set is not None:  # a multi-label model: the labels at or above their thresholds
                print(line + "\tlabels: " + (", ".join(p.label_set) or "none"))
                continue
            unknown = p.answer == "unknown"  # below the run's threshold: like none of its classes
            print(line + (f"\tunknown (familiarity {p.familiarity:.4g}, like none of the classes)" if unknown else ""))
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
    check_output_folder(folder, "--output_dir")
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
    from hf_cnn_ft.share.push import check_push_access, push_model_dir

    model_dir = Path(options.model_dir)
    kept = f"; nothing was pushed and {model_dir} is intact"
    space = check_push_access(options.space, kept) if options.space else None  # refused: before any upload
    images = True if options.images else None  # else the run's hub.push_images
    result = push_model_dir(model_dir, options.repo_id, options.private, options.branch, options.commit_message, images)
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
    from hf_cnn_ft.share.exports.exporting import check_export_folder, check_export_options, export_model
    from hf_cnn_ft.share.exports.registry import export_format

    export = export_format(options.format)
    images = [Path(p) for p in options.images] if options.images else None
    check_export_options(export, options.quantize, options.max_drop, options.qat_epochs, images)
    output = check_output_folder(options.output or Path(options.model_dir) / export.name, "--output")
    check_export_folder(output)
    result = export_model(
        options.model_dir,
        output,
        export.name,
        options.quantize,
        options.tolerance,
        images,
        options.max_drop,
        options.opset,
        options.qat_epochs,
    )
    print(
        f"{export.name} model:".ljust(19) + f"{result.model_path}\n"
        f"check:             max |logit difference| {result.max_abs_diff:.2e} on {result.checked_images} images, "
        f"top class agrees on {result.agreement:.0%} ({export.name} vs PyTorch, tolerance {options.tolerance:g})\n"
        f"preprocessing:     {result.directory / 'preprocessing.json'}"
    )
    if result.quantized_path:
        print(f"int8 model:        {result.quantized_path}")
        if result.accuracy:
            acc = result.accuracy
            print(
                f"validation accuracy ({result.validation_images} images): PyTorch {acc['torch']:.4f}, "
                f"{export.name} {acc['export']:.4f}, int8 {acc['int8']:.4f} ({-result.int8_drop:+.2f} points)"
            )
    return 0


def _merge(options: argparse.Namespace) -> int:
    check_model_location(options.adapter_dir)
    check_output_folder(options.output_dir, "merge OUTPUT_DIR")
    from hf_cnn_ft.share.run_dir import merge_adapter_dir

    output = merge_adapter_dir(options.adapter_dir, options.output_dir)
    print(f"merged model directory: {output}")
    return 0


def _add_export_verb(verbs: argparse._SubParsersAction) -> None:
    export = verbs.add_parser(
        "export", help="export to ONNX, OpenVINO, ExecuTorch or LiteRT, checked with its runtime; optionally int8"
    )
    export.add_argument("model_dir", help="a model directory, adapter run or Hub repo id")
    export.add_argument("--format", default="onnx", help="onnx (default), openvino, executorch or litert")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset")
    export.add_argument(
        "--quantize", choices=["int8"], help="also write a static int8 model, calibrated on training images"
    )
    export.add_argument(
        "--max_drop", type=float, help="with --quantize: fail when int8 loses more validation accuracy (points)"
    )
    export.add_argument(
        "--qat_epochs",
        type=int,
        default=0,
        help="with --quantize: fine-tune the int8 model this many epochs on the training split (openvino, executorch, "
        "litert)",
    )
    export.add_argument("--tolerance", type=float, default=1e-3, help="largest |logit difference| accepted")
    export.add_argument("--output", help="export directory (default: MODEL_DIR/FORMAT)")
    export.add_argument("--images", nargs="+", help="check on these images (default: the run's validation split)")


def add_run_verbs(verbs: argparse._SubParsersAction) -> None:
    """Verbs on a fine-tuned model: report, evaluate, predict, push, export, merge."""
    report = verbs.add_parser(
        "report", help="top losses with Grad-CAM, most confused pairs, calibration and slices of a model"
    )
    report.add_argument("model_dir", help="a run directory or a Hub model id")
    report.add_argument("--data", help="dataset source; default: the one in MODEL_DIR/recipe.yaml")
    report.add_argument("--split", default="test", help="test (default), validation, train, or all")
    report.add_argument("--output_dir", help="where the report goes; default: the run directory itself")
    report.add_argument("--slice_column", help="report accuracy and F1 per value of this metadata column")
    report.add_argument("--top_losses", type=int, help="how many wrong images to show")
    _add_tta_option(report)
    evaluate = verbs.add_parser("evaluate", help="evaluate a fine-tuned model on a labelled dataset")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--data", help="dataset source; default: the one in MODEL_DIR/recipe.yaml")
    evaluate.add_argument("--split", default="test", help="test (default), validation, train, or all")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    evaluate.add_argument(
        "--unknown",
        nargs="+",
        metavar="IMAGES",
        help="image files or folders of classes the model was not trained on: measures how well its 'unknown' "
        "answer tells them from the split's images (AUROC, false acceptance at its threshold)",
    )
    _add_tta_option(evaluate)

    predict = verbs.add_parser("predict", help="classify image files or folders")
    predict.add_argument("model_dir")
    predict.add_argument("inputs", nargs="+", help="image files and/or folders")
    predict.add_argument("--top_k", type=int, default=3)
    predict.add_argument("--output", help="write predictions to a .csv or .json file")
    _add_tta_option(predict)

    push = verbs.add_parser("push", help="push a fine-tuned model directory, with its model card, to the Hub")
    push.add_argument("model_dir")
    push.add_argument("repo_id", help="namespace/name (or just name: under the token's user)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--branch", help="push to this branch (created if missing)")
    push.add_argument("--commit_message")
    push.add_argument(
        "--images",
        action="store_true",
        help="also push the dataset's own images (examples/, the report's picture grids); only where its licence "
        "allows passing them on",
    )
    push.add_argument("--space", metavar="SPACE_REPO", help="also create or update a Gradio Space serving the model")

    _add_export_verb(verbs)

    merge = verbs.add_parser("merge", help="merge a peft adapter run into a plain model directory")
    merge.add_argument("adapter_dir")
    merge.add_argument("output_dir")


RUN_HANDLERS = {
    "report": _report,
    "evaluate": _evaluate,
    "predict": _predict,
    "push": _push,
    "export": _export,
    "merge": _merge,
}
