"""How a model expects its input images: size, interpolation, normalisation, crop."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


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


SMALL_IMAGE_SIDE = 64  # px: a shorter edge below this is a thumbnail-sized image (Fashion-MNIST, LFW crops)
SMALL_IMAGE_INPUT = 128  # px: BiT's rule for images under 96 px; a stride-32 backbone still ends on 4x4 features


def for_small_images(config: DataConfig, source_side: int) -> DataConfig:
    """The model's input for training images whose typical shorter edge is `source_side` pixels.

    Images under SMALL_IMAGE_SIDE hold no more detail when upscaled all the way to the model's own size:
    the input becomes SMALL_IMAGE_INPUT (or the model's own size where that is smaller), within a point
    of 224 px at half the cost on Fashion-MNIST (benchmarks/RESULTS.md), and evaluation keeps the whole
    image (crop_pct 1.0): a thumbnail has no border to spare. Larger images keep the model's own input.
    """
    if source_side >= SMALL_IMAGE_SIDE:
        return config
    size = min(config.input_size, SMALL_IMAGE_INPUT)
    logger.info(
        "the training images are small (median shorter edge %d px): input %d px instead of the model's %d, "
        "whole image at evaluation (crop_pct 1.0); set model.image_size / crop_pct to choose",
        source_side,
        size,
        config.input_size,
    )
    return replace(config, input_size=size, crop_pct=1.0)
