"""Decode once: every image decoded and resized a single time, then read back from Arrow each epoch.

A phone photo costs tens of milliseconds to decode at full size; the network sees it at 224 px.
Before training, each split is decoded, converted to RGB and resized once with `datasets.map`, into
an Arrow file under the datasets cache, so every later epoch (and the linear probe's feature pass)
pays only for a small PNG and the augmentation.

- Only images larger than needed are re-encoded: a validation or test image that the evaluation
  transform shrinks is stored exactly as it resizes it (shorter edge, or both edges with crop_mode
  squash, to input_size / crop_pct, same interpolation), so the evaluation sees bit-identical pixels;
  a training image keeps its aspect ratio with the shorter edge brought down to that size, so
  random-resized crops still choose from the whole image. Both as fast-compressed PNG.
- An image already at or below that size keeps its original encoded bytes: re-encoding a small JPEG as
  PNG would only make it slower to decode (measured on the food photos: benchmarks/RESULTS.md).
- The cache file is named by a fingerprint of the source (the dataset's fingerprint plus path, size
  and modification time of every image file) and of the resize: a changed image, a new file or
  another input size means a new cache, never a stale one. datasets writes it under a temporary name
  and renames it when complete.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from PIL import Image
from torchvision.transforms import v2

from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import (
    IMAGE_COLUMN,
    WRITER_BATCH,
    ImageData,
    SkippedImage,
    preparation_workers,
    report_skipped,
)
from hf_cnn_ft.data.images import failure_reason, to_rgb
from hf_cnn_ft.data.loading import require_usable
from hf_cnn_ft.data.transforms import interpolation_mode
from hf_cnn_ft.data.unlabeled import UNLABELED

logger = logging.getLogger(__name__)

CACHE_VERSION = "3"  # 3: unreadable images are marked in the cache
UNREADABLE = "_unreadable"


def cache_root() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf-cnn-ft-decoded"


def source_fingerprint(split: Dataset) -> str:
    """Changes whenever an image changes: the dataset's own fingerprint (content of embedded images,
    the table of paths) plus the size and modification time of every image file it points to."""
    digest = hashlib.sha256(split._fingerprint.encode())
    images = split.cast_column(IMAGE_COLUMN, datasets.Image(decode=False)).select_columns([IMAGE_COLUMN])
    for batch in images.iter(batch_size=WRITER_BATCH):  # a batch at a time: flat memory on millions of images
        for image in batch[IMAGE_COLUMN]:
            path = image.get("path") if image else None
            if path and not image.get("bytes") and os.path.exists(path):
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _shrinker(config: DataConfig, like_evaluation: bool) -> Callable[[Image.Image], Image.Image | None]:
    """The resize to store, or None where the image is not larger than needed (kept as it is)."""
    interpolation = interpolation_mode(config.interpolation)
    size = config.resize_size
    squash = like_evaluation and config.crop_mode == "squash"
    resize = v2.Resize((size, size) if squash else size, interpolation=interpolation)

    def shrink(image: Image.Image) -> Image.Image | None:
        larger = min(image.size) > size if not squash else image.size[0] >= size and image.size[1] >= size
        return resize(to_rgb(image)) if larger and image.size != (size, size) else None

    return shrink


def _encoded(item: dict, shrink: Callable[[Image.Image], Image.Image | None]) -> tuple[dict, str]:
    """The image as stored in the cache, and "" — or, for an image that cannot be decoded, why not."""
    try:
        data = item.get("bytes")
        if data is None:
            data = Path(item["path"]).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # the one full decode, also of images kept as they are
            small = shrink(image)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return {"bytes": None, "path": None}, failure_reason(exc)
    if small is None:
        return {"bytes": data, "path": None}, ""
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", compress_level=1)  # lossless; level 1 decodes as fast, encodes faster
    return {"bytes": buffer.getvalue(), "path": None}, ""


def _spec(config: DataConfig, like_evaluation: bool) -> str:
    mode = config.crop_mode if like_evaluation else "shorter-edge-down"
    return f"v{CACHE_VERSION}-{config.resize_size}-{mode}-{config.interpolation}-{like_evaluation}"


def decode_once(
    data: ImageData,
    config: DataConfig,
    root: Path | None = None,
    workers: int | None = None,
    keep: Collection[str] = (),
) -> ImageData:
    """`data` with every split read from a decoded, resized Arrow cache (built on first use).

    Building the cache is the one pass that decodes each image: an image that fails is dropped from its
    split and added to `skipped` (reported once, here), so the splits need no separate readable check.
    `workers` (data.preprocessing_num_workers) decode in parallel, each into its own Arrow shard. The splits
    in `keep` are left as they are (a streamed training split).
    """
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    cached, skipped = {}, []
    named = {**data.splits, **({UNLABELED: data.unlabeled} if data.unlabeled is not None else {})}
    for name, split in named.items():
        if name in keep:
            cached[name] = split
            continue
        cached[name], failed = _decoded(split, name, config, root, workers)
        skipped += failed
    report_skipped(skipped)
    unlabeled = cached.pop(UNLABELED, None)
    splits = DatasetDict(cached)
    require_usable(splits, data.source)
    return replace(data, splits=splits, skipped=[*data.skipped, *skipped], unlabeled=unlabeled)


def _decoded(
    split: Dataset, name: str, config: DataConfig, root: Path, workers: int | None
) -> tuple[Dataset, list[SkippedImage]]:
    """One split read from the cache, without the images that failed to decode, and those."""
    raw = split.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
    encoded = _cached_split(raw, name, config, root, preparation_workers(workers, len(raw)))
    reasons = encoded.select_columns([UNREADABLE])[:][UNREADABLE]
    bad = [i for i, reason in enumerate(reasons) if reason]
    skipped = []
    if bad:
        sources = raw.select(bad)[IMAGE_COLUMN]
        skipped = [SkippedImage(name, s.get("path") or f"{name}[{i}]", reasons[i]) for i, s in zip(bad, sources)]
        encoded = encoded.select([i for i, reason in enumerate(reasons) if not reason])
    return encoded.remove_columns(UNREADABLE).cast_column(IMAGE_COLUMN, datasets.Image()), skipped


def _cached_split(raw: Dataset, name: str, config: DataConfig, root: Path, workers: int | None) -> Dataset:
    like_evaluation = name not in ("train", UNLABELED)  # the pool is augmented like the training images
    key = hashlib.sha256(f"{source_fingerprint(raw)}-{_spec(config, like_evaluation)}".encode()).hexdigest()
    shrink = _shrinker(config, like_evaluation)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        images, reasons = (
            zip(*(_encoded(item, shrink) for item in batch[IMAGE_COLUMN])) if batch[IMAGE_COLUMN] else ((), ())
        )
        return {IMAGE_COLUMN: list(images), UNREADABLE: list(reasons)}

    return raw.map(
        encode,
        batched=True,
        batch_size=64,
        cache_file_name=str(root / f"{name}-{key[:32]}.arrow"),  # with workers: one shard file each
        load_from_cache_file=True,
        num_proc=workers,
        writer_batch_size=WRITER_BATCH,
        desc=f"Decoding the {name} images once",
    )
