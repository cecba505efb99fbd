"""Images to model inputs: the one place where a decoded image becomes a row of `pixel_values`.

Training, both probes, AdaBN, evaluation, prediction and the ONNX check all go through
`pixel_values`, so every path converts modes (to 8-bit RGB), transforms and lays out memory alike.
Images are transformed on one thread (`one_thread`), as in a loader worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from datasets import Dataset
from PIL import Image
from torch.utils.data import DataLoader

from hf_cnn_ft.data.dataset import IMAGE_COLUMN, LABEL_COLUMN, is_multi_label, targets_of
from hf_cnn_ft.data.images import to_rgb

Transform = Callable[[Image.Image], torch.Tensor]


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch ops on one thread inside the block. A transform's ops are too small to share out: spread over
    threads they cost more than on one, several times more when another process holds a core (a loader in
    the training process, as on a 2-core machine, would otherwise slow the whole run; benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def view_pixel_values(
    images: Sequence[Image.Image], views: Sequence[Transform], channels_last: bool = False
) -> list[torch.Tensor]:
    """One batch of model inputs per view: each image converted to RGB once, then transformed by every view
    and stacked (NHWC in memory if asked)."""
    rgb = [to_rgb(image) for image in images]
    with one_thread():
        batches = [torch.stack([view(image) for image in rgb]) for view in views]
    return [b.contiguous(memory_format=torch.channels_last) for b in batches] if channels_last else batches


def pixel_values(images: Sequence[Image.Image], transform: Transform, channels_last: bool = False) -> torch.Tensor:
    """A batch of model inputs: each image as RGB, transformed, stacked."""
    return view_pixel_values(images, [transform], channels_last)[0]


def with_pixel_values(dataset: Dataset, transform: Transform) -> Dataset:
    """`dataset` as the Trainer reads it: `pixel_values` and `labels` (of a multi-label split, multi-hot rows),
    transformed lazily, row by row."""

    feature = dataset.features.get(LABEL_COLUMN)
    labels_of = (lambda rows: list(targets_of(rows, feature.feature.num_classes))) if is_multi_label(feature) else list

    def apply(batch: dict[str, list]) -> dict[str, Any]:
        images = batch[IMAGE_COLUMN]
        return {"pixel_values": list(pixel_values(images, transform)), "labels": labels_of(batch[LABEL_COLUMN])}

    return dataset.with_transform(apply)


def pixel_batches(
    dataset: Dataset, transform: Transform, batch_size: int, channels_last: bool = False
) -> Iterator[torch.Tensor]:
    """The dataset's images as model inputs, batched in order (no labels, no shuffling)."""
    yield from (views[0] for views in view_batches(dataset, [transform], batch_size, channels_last))


def view_batches(
    dataset: Dataset, views: Sequence[Transform], batch_size: int, channels_last: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Like `pixel_batches`, with one batch of pixel values per view (test-time views)."""

    def collate(rows: list[dict[str, Any]]) -> list[torch.Tensor]:
        return view_pixel_values([row[IMAGE_COLUMN] for row in rows], views, channels_last)

    yield from DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
