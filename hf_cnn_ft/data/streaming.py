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

A source that is itself a stream (a Hub dataset, a folder of Parquet or WebDataset tar shards) is read shard
by shard (`shard_by_shard`): a shard that breaks off midway costs the rest of that shard, reported, never the
run. Its evaluation splits are read once into tables (`to_table`).
"""

from __future__ import annotations

import itertools
import logging
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import Dataset
from datasets.distributed import split_dataset_by_node
from PIL import Image

from hf_cnn_ft.data.dataset import IMAGE_COLUMN, LABEL_COLUMN
from hf_cnn_ft.data.images import decode_entry, failure_reason, to_rgb
from hf_cnn_ft.data.inputs import one_thread
from hf_cnn_ft.errors import UserError, first_line

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
                with one_thread():
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


def shard_by_shard(stream: datasets.IterableDataset, name: str) -> datasets.IterableDataset:
    """`stream` with its images undecoded and each shard read on its own: a shard that fails to open or breaks
    off midway is reported and the stream goes on with the next. Sharding, shuffling and per-process splitting
    work as on `stream` (the shards are this stream's shards)."""
    for column, feature in (stream.features or {}).items():
        if isinstance(feature, datasets.Image):
            stream = stream.cast_column(column, datasets.Image(decode=False))  # decoded where a failure is caught
    return datasets.IterableDataset.from_generator(
        _read_shards,
        features=stream.features,
        gen_kwargs={"shards": list(range(stream.n_shards)), "stream": stream, "name": name},
    )


def _read_shards(shards: list[int], stream: datasets.IterableDataset, name: str) -> Iterator[dict[str, Any]]:
    for index in shards:
        shard = stream.shard(num_shards=stream.n_shards, index=index)
        files = _shard_files(shard)
        where = f"{name} shard {index + 1} of {stream.n_shards}" + (f" ({', '.join(files)})" if files else "")
        read = 0
        try:
            # Batches of one, not `for row in shard`: iterated in a loader worker, a datasets stream would share
            # its shards among the workers again, and this shard is already this worker's alone.
            for batch in shard.iter(batch_size=1):
                read += 1
                yield {column: values[0] for column, values in batch.items()}
        except Exception as exc:  # pyarrow, tarfile, fsspec and HTTP errors: all mean the shard is damaged
            _report_once(where, f"skipping the rest of {where} after {read} rows: it is unreadable ({first_line(exc)})")
            continue
        broken = next(filter(None, map(_cut_short, files)), None)
        if broken:
            _report_once(where, f"skipping the rest of {where} after {read} rows: it is cut short ({broken})")


_reported: set[str] = set()  # damaged shards this process has warned of: every pass skips them, one warning says so


def _report_once(shard: str, message: str) -> None:
    logger.log(logging.DEBUG if shard in _reported else logging.WARNING, message)
    _reported.add(shard)


def _shard_files(shard: datasets.IterableDataset) -> list[str]:
    """The files behind a shard of a packaged (Parquet, WebDataset...) stream. datasets keeps them in the
    generator arguments of the shard's innermost iterable, which no public attribute exposes."""
    iterable = getattr(shard, "_ex_iterable", None)
    while getattr(iterable, "ex_iterable", None) is not None:
        iterable = iterable.ex_iterable
    kwargs = getattr(iterable, "kwargs", None) or {}
    files = kwargs.get("files", kwargs.get("tar_paths"))
    return [str(f) for f in files] if isinstance(files, list) else []


def _cut_short(path: str) -> str | None:
    """Why a local tar file ends early, or None. datasets' tar reader stops quietly where a file is cut, so
    the images after the cut would vanish unreported. A whole tar file ends with two zero blocks after its last
    member; walking the headers (a seek per member) finds a member or that end missing."""
    if not path.endswith(".tar") or not Path(path).is_file():
        return None
    size, end, last = Path(path).stat().st_size, 0, None
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                last, end = member.name, member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    except (tarfile.TarError, OSError) as exc:
        return f"{path}: {exc}"
    if end > size:
        return f"{path}: its member {last} is cut short"
    if size < end + 2 * tarfile.BLOCKSIZE:
        return f"{path}: it stops after member {last} without the end-of-archive blocks"
    return None


def to_table(stream: datasets.IterableDataset, fingerprint: str | None) -> Dataset:
    """An evaluation split read once from its stream into a table (images undecoded, as the stream gives them).
    With a `fingerprint` of the source (its files, or a pinned Hub revision) a second run reuses the table."""
    rows = {"stream": stream}
    return Dataset.from_generator(_rows_of, features=stream.features, gen_kwargs=rows, fingerprint=fingerprint)


def _rows_of(stream: datasets.IterableDataset) -> Iterator[dict[str, Any]]:
    yield from stream


def encode_stream_labels(stream: datasets.IterableDataset, label_names: list[str]) -> datasets.IterableDataset:
    """A stream's labels as indices into `label_names` (its rows with any other label left out), for a stream
    that declares no class names."""
    index = {name: i for i, name in enumerate(label_names)}
    features = stream.features.copy()
    features[LABEL_COLUMN] = datasets.ClassLabel(names=label_names)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return {LABEL_COLUMN: [index.get(str(value), -1) for value in batch[LABEL_COLUMN]]}

    return stream.map(encode, batched=True, features=features).filter(lambda row: row[LABEL_COLUMN] >= 0)
