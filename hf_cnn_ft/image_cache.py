"""Decode once: every image decoded and resized a single time, then read back from Arrow each epoch.

A phone photo costs tens of milliseconds to decode at full size; the network sees it at 224 px.
Before training, each split is decoded, converted to RGB and resized once with `datasets.map`, into
an Arrow file under the datasets cache, so every later epoch (and the linear probe's feature pass)
pays only for a small PNG and the augmentation.

- Validation and test images are stored exactly as the evaluation transform resizes them (shorter
  edge, or both edges with crop_mode squash, to input_size / crop_pct, same interpolation): the
  evaluation then sees bit-identical pixels.
- Training images keep their aspect ratio, with the shorter edge brought down to that same size (never
  up), so random-resized crops still choose from the whole image.
- The cache file is named by a fingerprint of the source (the dataset's fingerprint plus path, size
  and modification time of every image file) and of the resize: a changed image, a new file or
  another input size means a new cache, never a stale one. datasets writes it under a temporary name
  and renames it when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from PIL import Image
from torchvision.transforms import v2

from .data import IMAGE_COLUMN, ImageData, to_rgb
from .models import DataConfig
from .transforms import interpolation_mode

logger = logging.getLogger(__name__)

CACHE_VERSION = "1"


def cache_root() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf-cnn-ft-decoded"


def source_fingerprint(split: Dataset) -> str:
    """Changes whenever an image changes: the dataset's own fingerprint (content of embedded images,
    the table of paths) plus the size and modification time of every image file it points to."""
    digest = hashlib.sha256(split._fingerprint.encode())
    for image in split.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))[IMAGE_COLUMN]:
        path = image.get("path") if image else None
        if path and not image.get("bytes") and os.path.exists(path):
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resizer(config: DataConfig, like_evaluation: bool):
    interpolation = interpolation_mode(config.interpolation)
    size = config.resize_size
    if like_evaluation:
        exact = v2.Resize((size, size) if config.crop_mode == "squash" else size, interpolation=interpolation)
        return lambda image: exact(image)
    shorter = v2.Resize(size, interpolation=interpolation)
    return lambda image: shorter(image) if min(image.size) > size else image


def _spec(config: DataConfig, like_evaluation: bool) -> str:
    mode = config.crop_mode if like_evaluation else "shorter-edge-down"
    return f"v{CACHE_VERSION}-{config.resize_size}-{mode}-{config.interpolation}-{like_evaluation}"


def decode_once(data: ImageData, config: DataConfig, root: Path | None = None) -> ImageData:
    """`data` with every split read from a decoded, resized Arrow cache (built on first use)."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    cached = {}
    for name, split in data.splits.items():
        like_evaluation = name != "train"
        key = hashlib.sha256(f"{source_fingerprint(split)}-{_spec(config, like_evaluation)}".encode()).hexdigest()
        resize = _resizer(config, like_evaluation)

        def decode(batch: dict[str, list], resize=resize) -> dict[str, list[Image.Image]]:
            return {IMAGE_COLUMN: [resize(to_rgb(image)) for image in batch[IMAGE_COLUMN]]}

        cached[name] = split.map(
            decode,
            batched=True,
            batch_size=64,
            cache_file_name=str(root / f"{name}-{key[:32]}.arrow"),
            load_from_cache_file=True,
            desc=f"Decoding the {name} images once",
        )
    return replace(data, splits=DatasetDict(cached))
