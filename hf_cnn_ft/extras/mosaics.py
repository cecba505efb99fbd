"""A multi-label image set made from single-label photos: 2x2 mosaics, each labelled with every class it shows.

No multi-label image set installs offline, so `hf-cnn-ft data food-mosaics` and benchmarks/multi_label.py make
one from the food photos, and say so. The photos are split first (per class, seeded), so that no photo of a test
mosaic appears in a training or validation one; then each split's mosaics are drawn from its own photos."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from PIL import Image

TILE = 112  # pixels per tile: a mosaic is 224 x 224
SHARES = {"train": 0.6, "validation": 0.15, "test": 0.25}  # of each class's photos
MAX_CLASSES = 3  # a mosaic shows one to three classes in its four tiles


def split_photos(photos: dict[str, list[Path]], seed: int) -> dict[str, dict[str, list[Path]]]:
    """Each class's photos cut into train / validation / test (SHARES), with `seed`."""
    rng = np.random.default_rng(seed)
    parts: dict[str, dict[str, list[Path]]] = {split: {} for split in SHARES}
    for name, files in sorted(photos.items()):
        order = [files[i] for i in rng.permutation(len(files))]
        train_end = round(len(order) * SHARES["train"])
        validation_end = train_end + round(len(order) * SHARES["validation"])
        parts["train"][name], parts["validation"][name] = order[:train_end], order[train_end:validation_end]
        parts["test"][name] = order[validation_end:]
    return parts


def mosaic(photos: dict[str, list[Path]], rng: np.random.Generator) -> tuple[Image.Image, list[str]]:
    """Four tiles from one to MAX_CLASSES classes (each chosen class at least once), in a random order; the
    mosaic and its classes."""
    names = sorted(name for name, files in photos.items() if files)
    chosen = [str(n) for n in rng.choice(names, size=int(rng.integers(1, MAX_CLASSES + 1)), replace=False)]
    tiles = chosen + [str(n) for n in rng.choice(chosen, size=4 - len(chosen))]
    rng.shuffle(tiles)
    canvas = Image.new("RGB", (2 * TILE, 2 * TILE))
    for position, name in enumerate(tiles):
        photo = photos[name][int(rng.integers(len(photos[name])))]
        tile = Image.open(photo).convert("RGB").resize((TILE, TILE), Image.BILINEAR)
        canvas.paste(tile, ((position % 2) * TILE, (position // 2) * TILE))
    return canvas, sorted(chosen)


def mosaic_splits(photos: dict[str, list[Path]], seed: int, train_mosaics: int) -> datasets.DatasetDict:
    """train / validation / test mosaics (a quarter as many for validation and for test, at least 20) with their
    label sets as a list of ClassLabel."""
    rng = np.random.default_rng(1000 + seed)
    names = sorted(photos)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.List(datasets.ClassLabel(names=names))})
    splits = {}
    for split, parts in split_photos(photos, seed).items():
        made = [mosaic(parts, rng) for _ in range(train_mosaics if split == "train" else max(20, train_mosaics // 4))]
        rows = {"image": [image for image, _ in made], "label": [[names.index(n) for n in shown] for _, shown in made]}
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(splits)


def photos_by_folder(root: Path) -> dict[str, list[Path]]:
    """The photos of an image folder (root/<split>/<class>/file or root/<class>/file), by class folder name."""
    photos: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            photos.setdefault(path.parent.name, []).append(path)
    return photos
