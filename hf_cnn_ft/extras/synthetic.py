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
    _shape(ImageDraw.Draw(image), name, colour, size, rng, (0.35, 0.7))
    return image


def _shape(
    draw: ImageDraw.ImageDraw,
    name: str,
    colour: tuple[int, int, int],
    size: int,
    rng: np.random.Generator,
    extent_range: tuple[float, float] = (0.25, 0.45),
) -> None:
    extent = rng.uniform(*extent_range) * size
    x0, y0 = rng.uniform(0, size - extent, 2)
    jitter = tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in colour)
    box = (x0, y0, x0 + extent, y0 + extent)
    if name.endswith("disc"):
        draw.ellipse(box, fill=jitter)
    elif name.endswith("square"):
        draw.rectangle(box, fill=jitter)
    else:
        draw.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=jitter)


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


def make_multi_label_table(root: Path, images: int = 240, size: int = 48, seed: int = 0, separator: str = ";") -> Path:
    """A multi-label set: each image shows one to three of the three coloured shapes (each present with
    probability one half, at least one), and its labels are the shapes it shows. Writes the images and a CSV of
    (image, labels) rows, the labels joined by `separator`; returns the CSV."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,labels"]
    for i in range(images):
        shown = [name for name in CLASSES if rng.random() < 0.5] or [str(rng.choice(list(CLASSES)))]
        image = Image.fromarray(rng.normal(128, 30, (size, size, 3)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for name in shown:
            _shape(draw, name, CLASSES[name], size, rng)
        image.save(root / f"{i:04d}.png")
        rows.append(f"{i:04d}.png,{separator.join(shown)}")
    table = root / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    return table
