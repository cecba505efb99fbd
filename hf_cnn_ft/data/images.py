"""Single images: decoding any PIL mode to RGB, and telling why a file cannot be used."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image (grey, 16-bit, float, RGBA, palette, CMYK...) as 8-bit, 3-channel RGB.

    EXIF orientation is applied, and transparent pixels are composited onto white rather than
    left with whatever colour the alpha channel hid.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            high = 1.0
        array = np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def unreadable_reason(image: dict[str, Any]) -> str | None:
    """Why an undecoded image entry ({bytes, path}) cannot be used, or None if it decodes."""
    try:
        data = image.get("bytes")
        source = io.BytesIO(data) if data else image.get("path")
        if source is None:
            return "no image data"
        with Image.open(source) as img:
            img.load()
            if img.width < 1 or img.height < 1:
                return "empty image"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return failure_reason(exc)
    return None


def short_side(image: dict[str, Any]) -> int | None:
    """The shorter edge, in pixels, of an undecoded image entry ({bytes, path}), from its header alone."""
    try:
        data = image.get("bytes")
        with Image.open(io.BytesIO(data) if data else image["path"]) as img:
            return min(img.size)
    except Exception:  # unreadable images are the readable check's business
        return None


def decode_entry(image: dict[str, Any]) -> Image.Image:
    """An undecoded image entry ({bytes, path}), decoded; PIL's own exception for one that is not an image."""
    data = image.get("bytes")
    with Image.open(io.BytesIO(data) if data else image["path"]) as decoded:
        decoded.load()
    return decoded


def open_image(path: str | Path) -> Image.Image:
    """The image in `path`, decoded; ValueError saying why for a file that is not a readable image."""
    try:
        with Image.open(path) as image:
            image.load()
        return image
    except Exception as exc:  # PIL raises many types for a bad file
        raise ValueError(failure_reason(exc)) from None


def failure_reason(exc: BaseException) -> str:
    """Why an image could not be decoded, in one line: the exception type and its first line."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
