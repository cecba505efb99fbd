"""Small, learnable image sets made on the spot, for the tests, the benchmarks and quick tries (no download).

Each class is a coloured shape (red disc, green square, blue triangle) at a random position and
size on a noisy grey background. Files are written as a mix of PNG and JPEG, in class folders,
like a user's own image folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = {"red_disc": (200, 40, 40), "green_square": (40, 170, 60), "blue_triangle": (40, 70, 200)}


def _draw(name: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    background = rng.normal(128, 30, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    extent = rng.uniform(0.35, 0.7) * size
    x0, y0 = rng.uniform(0, size - extent, 2)
    jitter = tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in colour)
    box = (x0, y0, x0 + extent, y0 + extent)
    if name.endswith("disc"):
        draw.ellipse(box, fill=jitter)
    elif name.endswith("square"):
        draw.rectangle(box, fill=jitter)
    else:
        draw.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=jitter)
    return image


def make_shapes_folder(root: Path, per_class: int = 40, size: int = 48, seed: int = 0) -> Path:
    """Writes `per_class` images of each class under root/<class>/ and returns root."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = _draw(name, colour, size, rng)
            if i % 2:
                image.save(folder / f"{name}_{i:03d}.jpg", quality=92)
            else:
                image.save(folder / f"{name}_{i:03d}.png")
    return root


MARKS = {"red_mark": (210, 30, 30), "blue_mark": (30, 60, 210)}


def make_mark_folder(
    root: Path, per_class: int = 60, size: int = 128, mark: int = 40, seed: int = 0
) -> dict[str, tuple[int, int, int, int]]:
    """A dataset whose class is decided only by a small coloured square at a random position on grey
    noise: where the model must look is known. Returns each file's mark box (x0, y0, x1, y1)."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for name, colour in MARKS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.normal(128, 25, (size, size, 3)).clip(0, 255).astype(np.uint8)
            x0, y0 = (int(v) for v in rng.integers(0, size - mark, 2))
            pixels[y0 : y0 + mark, x0 : x0 + mark] = colour
            path = folder / f"{name}_{i:03d}.png"
            Image.fromarray(pixels).save(path)
            boxes[str(path)] = (x0, y0, x0 + mark, y0 + mark)
    return boxes


def make_hard_shapes_folder(root: Path, per_class: int = 60, size: int = 32, seed: int = 0) -> Path:
    """The shapes in one colour, so that only the outline tells the classes apart: hard to learn from a
    few images, easy to overfit (a model that ends up sure of itself beyond its accuracy)."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _draw(name, (150, 110, 100), size, rng).save(folder / f"{name}_{i:03d}.png")
    return root
