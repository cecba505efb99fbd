"""The report's pictures: image grids with Grad-CAM beside each image, and the reliability diagram."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hf_cnn_ft.evaluation.plots import pyplot


@dataclass
class Tile:
    image: np.ndarray  # H x W x 3 in [0, 1], the model's input view
    heat: np.ndarray  # H x W in [0, 1]
    caption: str


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image (H x W x 3 in [0, 1]) under its heat map drawn in the jet colour map, as uint8 RGB."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    return np.round(255 * ((1 - alpha) * image + alpha * colours)).astype(np.uint8)


def plot_tiles(tiles: list[Tile], path: Path, title: str, per_row: int = 4) -> None:
    """Each tile as two panels: the image, then the image under its heat map."""
    plt = pyplot()
    rows = max(1, -(-len(tiles) // per_row))
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(2.0 * 2 * per_row, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, tile in enumerate(tiles):
        row, column = divmod(index, per_row)
        left, right = axes[row, 2 * column], axes[row, 2 * column + 1]
        left.imshow(tile.image)
        left.set_title(tile.caption, fontsize=7, loc="left")
        right.imshow(heat_overlay(tile.image, tile.heat))
        right.set_title("Grad-CAM", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})  # photos barely compress: a third of the time
    plt.close(fig)


def plot_reliability(before: list[dict[str, Any]], after: list[dict[str, Any]] | None, path: Path) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for bins, label, marker in ((before, "as trained", "o"), (after, "temperature-scaled", "s")):
        if bins is None:
            continue
        used = [b for b in bins if b["count"]]
        ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker=marker, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
