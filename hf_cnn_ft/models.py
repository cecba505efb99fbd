"""Building a pretrained CNN with a fresh head for the user's classes, and loading it back.

The model is always an `AutoModelForImageClassification`: a `TimmWrapperForImageClassification`
for timm architectures and timm Hub repos, the native transformers class otherwise. Its
`DataConfig` (input size, interpolation, mean/std, crop_pct) says how images must be prepared.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    BitImageProcessor,
    PreTrainedModel,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)

from .errors import UserError
from .recipe import ModelArguments

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_RESAMPLE_PIL = {name: code for code, name in _PIL_RESAMPLE.items()}


@dataclass
class DataConfig:
    """How the model expects its input: square `input_size` after resize + centre crop."""

    input_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    crop_mode: str = "center"  # center: keep the aspect ratio, crop the middle; squash: resize both edges

    @property
    def resize_size(self) -> int:
        # The same rounding as timm's eval transform, so both libraries see identical pixels.
        return math.floor(self.input_size / self.crop_pct)


def is_timm_model(model: PreTrainedModel) -> bool:
    return isinstance(model, TimmWrapperForImageClassification)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _timm_architecture(name: str) -> str | None:
    import timm

    return name if timm.is_model(name) else None


def _unknown_model_error(name: str) -> UserError:
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(
        f"unknown model '{name}': not a timm architecture, a local directory or a Hub id (owner/name){hint}"
    )


def head_linear(model: nn.Module, num_labels: int) -> nn.Linear:
    """The classifier layer: the last Linear producing one output per class."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not found:
        raise RuntimeError(f"no classifier layer with {num_labels} outputs in {type(model).__name__}")
    return found[-1]


def _backbone(model: PreTrainedModel) -> nn.Module:
    return model.timm_model if is_timm_model(model) else model


def _head_parameter_names(model: PreTrainedModel) -> set[str]:
    backbone = _backbone(model)
    head = head_linear(backbone, model.config.num_labels)
    prefix = next(name for name, module in backbone.named_modules() if module is head)
    return {f"{prefix}.{p}" for p, _ in head.named_parameters()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads weights from .safetensors or a PyTorch file, never unpickling arbitrary objects."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"weights file {path} could not be read ({_first_line(exc)})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} does not hold a state dict of tensors")
    return state


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    for prefix in ("timm_model.", "module.", "model."):
        stripped = {k.removeprefix(prefix): v for k, v in state.items()}
        if len(expected & stripped.keys()) > len(expected & state.keys()):
            state = stripped
    return state


def state_dict_mismatch(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], ignore: set[str] = frozenset()
) -> str | None:
    """Describes the first tensor of `state` that does not fit `target`, or None if all fit."""
    for key, tensor in state.items():
        if key in ignore:
            continue
        if key not in target:
            return f"it has tensor '{key}', the model does not"
        if tuple(tensor.shape) != tuple(target[key].shape):
            return f"tensor '{key}' is {list(tensor.shape)} in the file but {list(target[key].shape)} in the model"
    missing = [k for k in target if k not in state and k not in ignore and not k.endswith("num_batches_tracked")]
    if missing:
        return f"tensor '{missing[0]}' is missing from the file"
    return None


def load_backbone_weights(model: PreTrainedModel, path: Path) -> None:
    """Loads a pretrained-weights file into everything but the (new) classifier head.

    Raises a UserError naming the first tensor that does not fit, so loading the weights of
    another architecture fails on one clear line instead of deep inside PyTorch.
    """
    backbone = _backbone(model)
    target = backbone.state_dict()
    head = _head_parameter_names(model)
    state = _strip_prefixes(read_state_dict(path), set(target))
    state = {k: v for k, v in state.items() if k not in head}
    name = getattr(model.config, "architecture", None) or model.config.model_type
    problem = state_dict_mismatch(state, target, ignore=head)
    if problem:
        raise UserError(f"weights file {path} does not fit model '{name}': {problem}")
    backbone.load_state_dict(state, strict=False)


def _zero_head(model: PreTrainedModel) -> None:
    head = head_linear(_backbone(model), model.config.num_labels)
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


def _label_maps(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def _build_timm(args: ModelArguments, architecture: str, label_names: list[str]) -> PreTrainedModel:
    import timm

    base, _, _ = architecture.partition(".")
    model_args = _timm_regularisation(args)
    config = TimmWrapperConfig(architecture=base, model_args=model_args or None, **_label_maps(label_names))
    model = TimmWrapperForImageClassification(config)
    if args.pretrained and args.weights is None:
        try:
            pretrained = timm.create_model(architecture, pretrained=True, num_classes=len(label_names), **model_args)
        except Exception as exc:  # the Hub client raises many types; all mean the same to the user
            raise UserError(
                f"could not fetch pretrained weights for '{architecture}' ({_first_line(exc)}); offline, set "
                "model.weights to a local weights file, or model.pretrained: false to train from scratch"
            ) from None
        model.timm_model = pretrained
    pretrained_cfg = dict(model.timm_model.pretrained_cfg)
    pretrained_cfg.pop("num_classes", None)
    model.config.pretrained_cfg = _json_ready(pretrained_cfg)
    return model


def _timm_regularisation(args: ModelArguments) -> dict[str, float]:
    return {k: v for k, v in (("drop_rate", args.drop_rate), ("drop_path_rate", args.drop_path_rate)) if v is not None}


_DROPOUT_ATTRIBUTES = ("classifier_dropout_prob", "classifier_dropout", "dropout_rate", "hidden_dropout_prob")


def _config_regularisation(args: ModelArguments, config: Any, source: str) -> dict[str, Any]:
    """Config updates that set the recipe's dropout / drop-path rates on a loaded architecture."""
    if config.model_type == "timm_wrapper":
        wanted = _timm_regularisation(args)
        return {"model_args": {**(config.model_args or {}), **wanted}} if wanted else {}
    updates: dict[str, Any] = {}
    if args.drop_path_rate is not None:
        if not hasattr(config, "drop_path_rate"):
            raise UserError(
                f"model '{source}' ({config.model_type}) has no drop-path setting; unset model.drop_path_rate"
            )
        updates["drop_path_rate"] = args.drop_path_rate
    if args.drop_rate is not None:
        attribute = next((a for a in _DROPOUT_ATTRIBUTES if hasattr(config, a)), None)
        if attribute is None:
            raise UserError(f"model '{source}' ({config.model_type}) has no dropout setting; unset model.drop_rate")
        updates[attribute] = args.drop_rate
    return updates


def _json_ready(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _build_from_pretrained(args: ModelArguments, source: str, label_names: list[str]) -> tuple[PreTrainedModel, bool]:
    """Loads a local directory or Hub repo; returns the model and whether its head is new."""
    common = {"revision": args.model_revision, "trust_remote_code": args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except Exception as exc:
        raise UserError(f"could not load model '{source}' ({_first_line(exc)})") from None
    regularisation = _config_regularisation(args, config, source)
    if not args.pretrained:
        # The architecture alone, randomly initialised: the baseline that shows what pretraining buys.
        config.update({**_label_maps(label_names), **regularisation})
        return AutoModelForImageClassification.from_config(config, trust_remote_code=args.trust_remote_code), True
    common.update(regularisation)
    existing = [config.id2label.get(i) for i in range(config.num_labels)] if config.id2label else []
    if existing == label_names:
        model = AutoModelForImageClassification.from_pretrained(source, **common)
        return model, False
    try:
        # The new head's size mismatch is expected: keep transformers' report of it out of the log.
        with _quiet_transformers():
            model = AutoModelForImageClassification.from_pretrained(
                source, ignore_mismatched_sizes=True, **_label_maps(label_names), **common
            )
    except Exception as exc:
        raise UserError(f"could not load model '{source}' as an image classifier ({_first_line(exc)})") from None
    return model, True


def build_model(args: ModelArguments, label_names: list[str]) -> tuple[PreTrainedModel, DataConfig]:
    """The backbone that the recipe names, with a head sized to `label_names`."""
    source = args.model
    if not source:
        raise UserError("no model given: set model.model (or --model) to a timm name, Hub id or local directory")
    new_head = True
    if Path(source).expanduser().is_dir():
        model, new_head = _build_from_pretrained(args, str(Path(source).expanduser()), label_names)
        processor_source = str(Path(source).expanduser())
    elif (architecture := _timm_architecture(source)) is not None:
        model = _build_timm(args, architecture, label_names)
        processor_source = None
    elif "/" in source and not source.startswith((".", "/", "~")):
        model, new_head = _build_from_pretrained(args, source, label_names)
        processor_source = source
    elif "/" in source or source.startswith((".", "~")):
        raise UserError(f"model directory {source} does not exist")
    else:
        raise _unknown_model_error(source)
    if args.weights is not None:
        load_backbone_weights(model, Path(args.weights).expanduser())
    if new_head and args.zero_init_head:
        _zero_head(model)
    data_config = resolve_data_config(model, processor_source, revision=args.model_revision)
    if args.image_size is not None:
        data_config.input_size = args.image_size
    if args.crop_pct is not None:
        data_config.crop_pct = args.crop_pct
    if args.crop_mode is not None:
        if args.crop_mode not in ("center", "squash"):
            raise UserError(f"model.crop_mode must be center or squash, got '{args.crop_mode}'")
        data_config.crop_mode = args.crop_mode
    set_data_config(model, data_config)
    return model, data_config


def base_model_id(args: ModelArguments, model: PreTrainedModel) -> str | None:
    """The Hub repo the pretrained weights came from, for the model card's `base_model`."""
    source = args.model or ""
    if not args.pretrained or args.weights is not None or Path(source).expanduser().exists():
        return None
    if is_timm_model(model) and _timm_architecture(source) is not None:
        return (model.config.pretrained_cfg or {}).get("hf_hub_id") or None
    return source.removeprefix("hf-hub:") if source.count("/") == 1 else None


def _size_field(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _data_config_from_processor(processor: Any) -> DataConfig:
    size = getattr(processor, "size", None) or {}
    squash = _size_field(size, "shortest_edge") is None and _size_field(size, "height") is not None
    edge = _size_field(size, "shortest_edge") or _size_field(size, "height") or 224
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    crop_pct = getattr(processor, "crop_pct", None)
    if crop and _size_field(crop, "height"):
        input_size, crop_pct = _size_field(crop, "height"), _size_field(crop, "height") / edge
    elif crop_pct and edge < 384:  # ConvNeXt-style processors crop only below 384 px
        input_size = edge
    else:
        input_size, crop_pct = edge, 1.0
    resample = getattr(processor, "resample", 2)
    try:
        interpolation = _PIL_RESAMPLE.get(int(resample), "bilinear")
    except (TypeError, ValueError):
        interpolation = "bilinear"
    return DataConfig(
        input_size=input_size,
        interpolation=interpolation,
        mean=tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN),
        std=tuple(getattr(processor, "image_std", None) or IMAGENET_STD),
        crop_pct=float(crop_pct),
        crop_mode="squash" if squash else "center",
    )


def resolve_data_config(model: PreTrainedModel, source: str | None, revision: str | None = None) -> DataConfig:
    """The preprocessing that the pretrained weights were trained with."""
    if is_timm_model(model):
        import timm.data

        cfg = timm.data.resolve_data_config(pretrained_cfg=dict(model.config.pretrained_cfg))
        return DataConfig(
            input_size=int(cfg["input_size"][-1]),
            interpolation=str(cfg["interpolation"]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            crop_pct=float(cfg["crop_pct"]),
            crop_mode="squash" if cfg.get("crop_mode") == "squash" else "center",
        )
    if source is not None:
        try:
            return _data_config_from_processor(AutoImageProcessor.from_pretrained(source, revision=revision))
        except Exception as exc:  # no processor config in the repo: fall back to ImageNet defaults
            logger.info("no image processor found for %s (%s); using ImageNet defaults", source, _first_line(exc))
    return DataConfig()


def set_data_config(model: PreTrainedModel, data_config: DataConfig) -> None:
    """Records the preprocessing in a timm model's config, where its image processor reads it."""
    if is_timm_model(model):
        cfg = dict(model.config.pretrained_cfg or {})
        cfg.update(
            input_size=[3, data_config.input_size, data_config.input_size],
            interpolation=data_config.interpolation,
            mean=list(data_config.mean),
            std=list(data_config.std),
            crop_pct=data_config.crop_pct,
            crop_mode=data_config.crop_mode,
        )
        model.config.pretrained_cfg = cfg


def image_processor_for(data_config: DataConfig) -> BitImageProcessor:
    """An image processor doing exactly the eval transform: resize shortest edge, centre crop."""
    resize = data_config.resize_size
    return BitImageProcessor(
        size={"height": resize, "width": resize} if data_config.crop_mode == "squash" else {"shortest_edge": resize},
        crop_size={"height": data_config.input_size, "width": data_config.input_size},
        resample=_RESAMPLE_PIL.get(data_config.interpolation, 2),
        image_mean=list(data_config.mean),
        image_std=list(data_config.std),
    )


def save_model(model: PreTrainedModel, data_config: DataConfig, directory: Path) -> None:
    """Writes safetensors weights, config and preprocessing so `pipeline(model=directory)` works.

    A timm model is written so that timm loads it too (``timm.create_model("local-dir:DIR")`` or
    ``"hf-hub:REPO"``): raw timm tensor names, and no null ``model_args`` in config.json.
    transformers' TimmWrapper reads that layout as well.
    """
    set_data_config(model, data_config)
    if is_timm_model(model):
        # A config loaded from a timm directory keeps that directory's label_names unless told otherwise.
        model.config.label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    model.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors
    model.save_pretrained(directory, safe_serialization=True)
    if is_timm_model(model):
        _make_timm_loadable(Path(directory))
    else:
        # timm models keep their preprocessing in config.json (pretrained_cfg).
        image_processor_for(data_config).save_pretrained(directory)


def _make_timm_loadable(directory: Path) -> None:
    from safetensors.torch import load_file, save_file

    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    if not config.get("model_args"):
        config.pop("model_args", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    for weights in directory.glob("*.safetensors"):
        state = {k.removeprefix("timm_model."): v for k, v in load_file(str(weights)).items()}
        save_file(state, str(weights), metadata={"format": "pt"})


def load_model(directory: str | Path) -> tuple[PreTrainedModel, DataConfig]:
    """Loads a fine-tuned model directory (or Hub repo) for evaluation or prediction. An adapter
    directory is loaded onto its base model and merged."""
    source = str(directory)
    from .lora import is_adapter_dir, load_adapter_dir

    if is_adapter_dir(source):
        adapted, data_config = load_adapter_dir(source)
        return adapted.merge_and_unload().eval(), data_config
    if not Path(source).expanduser().exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise UserError(f"model directory {source} does not exist")
    try:
        model = AutoModelForImageClassification.from_pretrained(source)
    except Exception as exc:
        raise UserError(f"could not load model '{source}' ({_first_line(exc)})") from None
    return model.eval(), resolve_data_config(model, source)
