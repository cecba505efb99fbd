"""The helper verbs: offline data and weights, model inspection, the demo, the demo page of a model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hf_cnn_ft.config.paths import check_model_location, check_output_folder
from hf_cnn_ft.errors import UserError


def _data(options: argparse.Namespace) -> int:
    from hf_cnn_ft.extras.offline_data import OFFLINE_DATASETS, prepare_dataset

    spec = OFFLINE_DATASETS.get(options.name)
    check_output_folder(options.root, "--root")
    folder = prepare_dataset(options.name, Path(options.root))
    if spec is not None:
        print(f"{options.name}: {spec.description}\nsource: {spec.source}\nlicence: {spec.licence}")
    print(f"ready: {folder}")
    return 0


def _import_weights(options: argparse.Namespace) -> int:
    from hf_cnn_ft.extras.known_weights import import_known_weights
    from hf_cnn_ft.models.weights_import import import_weights

    if options.output:
        check_output_folder(options.output, "--output")
    if options.known:
        output = import_known_weights(options.known, Path(options.output) if options.output else None)
    else:
        if not (options.weights_file and options.architecture and options.output):
            raise UserError("import-weights needs FILE --architecture NAME --output DIR (or --known NAME)")
        preprocessing = {
            key: value
            for key, value in {
                "input_size": options.input_size,
                "interpolation": options.interpolation,
                "mean": options.mean,
                "std": options.std,
                "crop_pct": options.crop_pct,
            }.items()
            if value is not None
        }
        output = import_weights(
            Path(options.weights_file), options.architecture, Path(options.output), options.layout, preprocessing
        )
    print(f"model directory: {output}")
    return 0


def _model_to_inspect(source: str) -> tuple[Any, Any, str]:
    """A run or model directory as it was saved, head included; a backbone name or Hub id as training
    builds it, with the head that training replaces."""
    from hf_cnn_ft.config.sections import ModelArguments
    from hf_cnn_ft.models.build import build_model
    from hf_cnn_ft.models.io import label_names_of
    from hf_cnn_ft.share.run_dir import load_run

    local = Path(source).expanduser()
    if any((local / name).is_file() for name in ("config.json", "adapter_config.json")):
        model, data_config = load_run(local)
        labels = label_names_of(model)
        return model, data_config, f"{len(labels)} classes ({', '.join(labels)})"
    # Architecture names build randomly initialised: the stages do not depend on the weights.
    model, data_config = build_model(
        ModelArguments(model=source, pretrained=local.exists() or "/" in source), ["a", "b"]
    )
    return model, data_config, "replaced by one for your classes when you train"


def _inspect(options: argparse.Namespace) -> int:
    from hf_cnn_ft.models.anatomy import describe_stages

    model, data_config, head = _model_to_inspect(options.model)
    rows = describe_stages(model)
    total = sum(count for _, count in rows)
    print(f"{options.model}: {type(model).__name__}, input {data_config.input_size} px, {total:,} parameters")
    print(f"head: {head}")
    if options.modules:
        from hf_cnn_ft.strategies.adapters import default_target_modules

        targets = set(default_target_modules(model))
        for name, module in model.named_modules():
            if name and not list(module.children()):
                mark = "  (peft default target)" if name in targets else ""
                print(f"  {name:<50} {type(module).__name__}{mark}")
        return 0
    for position, (name, count) in enumerate(rows):
        print(f"  {position:>2}  {name:<10} {count:>12,}")
    print("freeze: N freezes the first N stages; 'backbone' all but the head")
    return 0


def _demo(options: argparse.Namespace) -> int:
    from hf_cnn_ft.cli.demo import run_demo

    run_demo(Path(options.output_dir), Path(options.recipe))
    return 0


def _app(options: argparse.Namespace) -> int:
    check_model_location(options.model_dir)  # a wrong path: one line before Gradio loads
    try:
        from hf_cnn_ft.app.page import serve
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        raise UserError("the demo page needs Gradio: pip install 'hf-cnn-ft[app]'") from None
    serve(options.model_dir, options.port, options.host, options.share == "true", options.top_k)
    return 0


def add_tool_verbs(verbs: argparse._SubParsersAction) -> None:
    """Helpers: offline data and weights, model inspection, the demo."""
    data = verbs.add_parser("data", help="fetch a real offline dataset into data/ with fixed splits")
    data.add_argument("name", help="food, food-mosaics, food-fine, elpv, elpv4 or fashion-mnist")
    data.add_argument("--root", default="data")

    weights = verbs.add_parser(
        "import-weights", help="turn a checkpoint file into a model directory transformers and timm load"
    )
    weights.add_argument("weights_file", nargs="?", help=".safetensors or PyTorch state dict")
    weights.add_argument("--known", help="fetch and import known offline weights (efficientnet_lite0, mobilenet_v2...)")
    weights.add_argument("--architecture", help="timm architecture the weights belong to")
    weights.add_argument("--layout", default="timm", choices=["timm", "torchvision", "efficientnet-pytorch"])
    weights.add_argument("--output", help="model directory to write")
    weights.add_argument("--input_size", type=int)
    weights.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"])
    weights.add_argument("--mean", type=float, nargs=3)
    weights.add_argument("--std", type=float, nargs=3)
    weights.add_argument("--crop_pct", type=float)

    inspect = verbs.add_parser("inspect", help="print a model's stages (what finetune.freeze counts)")
    inspect.add_argument("model", help="timm name, Hub id or local model directory")
    inspect.add_argument("--modules", action="store_true", help="list the layers (peft.target_modules names)")

    app = verbs.add_parser("app", help="a demo page: drop an image, see the top classes and Grad-CAM (Gradio)")
    app.add_argument("model_dir", help="a run directory, adapter run or Hub model id")
    app.add_argument("--port", type=int, help="default: 7860, or the first free port after it")
    app.add_argument("--host", help="default 127.0.0.1; 0.0.0.0 serves the whole network")
    app.add_argument("--share", choices=["true", "false"], default="false", help="a public link through Gradio")
    app.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=3)

    demo = verbs.add_parser("demo", help="fine-tune pretrained EfficientNet-Lite0 on real food photos, offline")
    demo.add_argument("--output_dir", default="outputs/demo")
    demo.add_argument("--recipe", default="recipes/food-efficientnet-lite0.yaml")


TOOL_HANDLERS = {"data": _data, "import-weights": _import_weights, "inspect": _inspect, "demo": _demo, "app": _app}
