"""Streaming (`data.streaming`): the training images read as a stream, decoded as they go by, never copied.

The training split's table of references (paths or embedded bytes, and labels) stays what it is; the
images behind it are read through a `datasets` IterableDataset in shards: each process takes its own
(`split_dataset_by_node`), each loader worker its own shards of those, and a seeded buffer shuffles them.
Nothing is decoded ahead (no readable check, no decode-once cache): an image that cannot be decoded is
skipped and reported when the stream reaches it. Memory stays at the shuffle buffer and the batches in
flight, whatever the dataset's size.

The stream has no end: pass after pass, each shuffled anew, so the schedule counts steps (max_steps) and a
resumed run, which replays the stream up to its checkpoint's step, reads exactly what the killed run would
have read next. Evaluation splits stay tables: every image evaluated once across processes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import torch
from datasets import Dataset
from datasets.distributed import split_dataset_by_node
from PIL import Image

from hf_cnn_ft.data.dataset import IMAGE_COLUMN, LABEL_COLUMN
from hf_cnn_ft.data.images import decode_entry, failure_reason, to_rgb
from hf_cnn_ft.errors import UserError

logger = logging.getLogger(__name__)

SHARDS_PER_READER = 8  # shards per process and loader worker: an even split, and shard order shuffles too


class StreamingImages(torch.utils.data.IterableDataset):
    """The training split as this process reads it: its shards, shuffled in a buffer, decoded and transformed
    one image at a time, rows of `pixel_values` and `labels`, pass after pass without end. `train` is a
    table (read in shards) or already a stream."""

    def __init__(
        self,
        train: Dataset | datasets.IterableDataset,
        transform: Callable[[Image.Image], torch.Tensor],
        seed: int,
        buffer_size: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
    ) -> None:
        stream = train.cast_column(
            IMAGE_COLUMN, datasets.Image(decode=False)
        )  # decoded here, where a failure is caught
        if isinstance(stream, Dataset):  # a table: read in shards
            stream = stream.to_iterable_dataset(
                num_shards=min(len(stream), world_size * max(1, workers) * SHARDS_PER_READER)
            )
        self.stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        self.transform, self.seed, self.buffer_size = transform, seed, buffer_size

    def rows(self, pass_index: int) -> Iterator[dict[str, Any]]:
        """One pass over this process's images (in a loader worker: that worker's share), in shuffled order."""
        shuffled = self.stream.shuffle(seed=self.seed, buffer_size=self.buffer_size)
        shuffled.set_epoch(pass_index)
        for row in shuffled:
            image = row[IMAGE_COLUMN]
            try:
                pixels = self.transform(to_rgb(decode_entry(image)))
            except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
                where = image.get("path") or "(embedded)"
                logger.warning("skipping unreadable image %s (%s)", where, failure_reason(exc))
                continue
            yield {"pixel_values": pixels, "labels": row[LABEL_COLUMN]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id >= self.stream.n_shards:
            return  # more loader workers than shards: this one has nothing to read
        for pass_index in itertools.count():
            read = 0
            for row in self.rows(pass_index):
                read += 1
                yield row
            if not read:
                raise UserError("data.streaming: no readable training image in this process's share of the stream")
