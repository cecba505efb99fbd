"""Reading weight files safely and loading them into a backbone, with one clear line for a misfit."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    PreTrainedModel,
)

from hf_cnn_ft.errors import UserError, first_line
from hf_cnn_ft.models.anatomy import backbone_of, head_parameter_names


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
        raise UserError(f"weights file {path} could not be read ({first_line(exc)})") from None
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
    backbone = backbone_of(model)
    target = backbone.state_dict()
    head = head_parameter_names(model)
    state = _strip_prefixes(read_state_dict(path), set(target))
    state = {k: v for k, v in state.items() if k not in head}
    name = getattr(model.config, "architecture", None) or model.config.model_type
    problem = state_dict_mismatch(state, target, ignore=head)
    if problem:
        raise UserError(f"weights file {path} does not fit model '{name}': {problem}")
    backbone.load_state_dict(state, strict=False)
