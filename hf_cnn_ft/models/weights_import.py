"""Importing external checkpoints into model directories that transformers and timm both load.

Three key layouts are understood:

- ``timm``: a timm state dict (or safetensors) for the given timm architecture;
- ``torchvision``: a torchvision state dict, paired tensor by tensor, in order, with the timm
  architecture that has the same layers (e.g. ``mobilenet_v2`` -> ``mobilenetv2_100``);
- ``efficientnet-pytorch``: lukemelas' EfficientNet / EfficientNet-Lite naming, renamed to timm's
  ``tf_efficientnet*`` (the TF "same" padding those weights were trained with).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.io import save_model
from hf_cnn_ft.models.state_dicts import read_state_dict, state_dict_mismatch

logger = logging.getLogger(__name__)


LAYOUTS = ("timm", "torchvision", "efficientnet-pytorch")


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
