"""How a model expects its input images: size, interpolation, normalisation, crop."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
