"""Saving a fine-tuned model so transformers and timm load it, loading it back, and its preprocessing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    BitImageProcessor,
    PreTrainedModel,
)

from hf_cnn_ft.config.paths import check_model_location
from hf_cnn_ft.data.data_config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from hf_cnn_ft.errors import UserError, first_line
from hf_cnn_ft.models.anatomy import backbone_of, head_linear, is_timm_model
from hf_cnn_ft.models.hub import model_source

logger = logging.getLogger(__name__)

_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


_RESAMPLE_PIL = {name: code for code, name in _PIL_RESAMPLE.items()}


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
            logger.info("no image processor found for %s (%s); using ImageNet defaults", source, first_line(exc))
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


def label_names_of(model: PreTrainedModel) -> list[str]:
    """The model's class names, in the order of its outputs."""
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


FOLDED_TEMPERATURE = "calibration_temperature_folded"  # config.json: the temperature the head already divides by
_UNFOLDED_TEMPERATURE = "calibration_temperature"  # runs of earlier versions: applied by this tool only
MULTI_LABEL = "multi_label_classification"  # config.problem_type of a model with several labels per image
LABEL_THRESHOLDS = "label_thresholds"  # config.json of a multi-label model: each label's fitted threshold


def is_multi_label_model(model: torch.nn.Module) -> bool:
    return getattr(model.config, "problem_type", None) == MULTI_LABEL


def label_thresholds(model: torch.nn.Module) -> list[float] | None:
    """A multi-label model's decision threshold per label, as its run fitted them (None: not fitted)."""
    return getattr(model.config, LABEL_THRESHOLDS, None)


def set_label_thresholds(model: torch.nn.Module, thresholds: list[float]) -> None:
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model
    setattr(plain.config, LABEL_THRESHOLDS, [float(t) for t in thresholds])


UNKNOWN_REJECTION = "unknown_rejection"  # config.json: the "none of these" score and threshold (rejection.py)
# The training features' statistics a feature-space "unknown" score needs (class means, precision matrix): a file
# beside the weights, which transformers and timm ignore, attached to the loaded model by this tool.
FAMILIARITY_FILE = "familiarity.safetensors"
_FAMILIARITY = "_hf_cnn_ft_familiarity"


def familiarity_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    return getattr(model, _FAMILIARITY, None)


def set_familiarity_statistics(model: torch.nn.Module, statistics: dict[str, torch.Tensor] | None) -> None:
    setattr(model, _FAMILIARITY, statistics)


def save_familiarity(model: torch.nn.Module, directory: Path) -> None:
    from safetensors.torch import save_file

    statistics = familiarity_statistics(model)
    if statistics:
        save_file({k: v.contiguous() for k, v in statistics.items()}, str(Path(directory) / FAMILIARITY_FILE))


def attach_familiarity(model: torch.nn.Module, source: str | Path) -> None:
    """Attaches the statistics saved beside the weights in `source` (a folder, or a Hub repo), where there are."""
    from safetensors.torch import load_file

    folder = Path(source)
    if folder.is_dir():
        path = folder / FAMILIARITY_FILE
        found = str(path) if path.is_file() else None
    else:
        from huggingface_hub import hf_hub_download

        try:
            found = hf_hub_download(str(source), FAMILIARITY_FILE)
        except Exception:  # noqa: BLE001  (a repo without the file, or one that cannot be reached: no statistics)
            found = None
    stored = getattr(model.config, UNKNOWN_REJECTION, None) or {}
    if not found and stored.get("score") == "mahalanobis":  # the run fitted a feature score: say why it is off
        logger.warning("%s has no %s: its 'unknown' answer is off, every image gets a class", source, FAMILIARITY_FILE)
    set_familiarity_statistics(model, load_file(found) if found else None)


def folded_temperature_of(model: PreTrainedModel) -> float:
    """The temperature folded into the classification layer when the run ended (1.0: uncalibrated). The model's
    logits are already divided by it; `logits * T` are the logits as trained."""
    return float(getattr(model.config, FOLDED_TEMPERATURE, None) or 1.0)


@torch.no_grad()
def fold_temperature(model: torch.nn.Module, temperature: float) -> None:
    """Divides the classification layer's weights and bias by `temperature`, so that the logits of every loader
    (transformers' pipeline, timm, ONNX, this tool) are the calibrated ones, with nothing to know."""
    plain = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model: its head copy
    head = head_linear(backbone_of(plain), plain.config.num_labels)
    head.weight.div_(temperature)
    if head.bias is not None:
        head.bias.div_(temperature)
    setattr(plain.config, FOLDED_TEMPERATURE, folded_temperature_of(plain) * temperature)


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
        model.config.label_names = label_names_of(model)
    model.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors
    model.save_pretrained(directory, safe_serialization=True)
    save_familiarity(model, Path(directory))
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
    """Loads a fine-tuned model directory (or Hub repo) for evaluation or prediction."""
    source = str(directory)
    if not check_model_location(source):
        source = model_source(source)
    try:
        model = AutoModelForImageClassification.from_pretrained(source)
    except Exception as exc:
        raise UserError(f"could not load model '{source}' ({first_line(exc)})") from None
    unfolded = getattr(model.config, _UNFOLDED_TEMPERATURE, None)
    if unfolded:  # an earlier version's run: its temperature is folded now, as a run of this one has it
        delattr(model.config, _UNFOLDED_TEMPERATURE)
        fold_temperature(model, float(unfolded))
    attach_familiarity(model, source)
    return model.eval(), resolve_data_config(model, source)
