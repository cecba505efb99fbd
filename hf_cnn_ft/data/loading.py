"""Loading the dataset that a recipe describes: source -> columns -> labels -> splits -> readable images.

A listed source (a folder, a table, a saved dataset, a Hub dataset without streaming) becomes tables; a
streamed source (data.streaming on a Hub dataset or a folder of shards) keeps its training split a stream
and reads its evaluation splits once into tables. From there both take the same way."""

from __future__ import annotations

import logging

import datasets
import numpy as np
from datasets import Dataset, DatasetDict, IterableDatasetDict

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    SLICE_COLUMN,
    ImageData,
    SkippedImage,
    drop_unreadable_images,
    encode_labels,
    label_counts,
    normalise_columns,
    split_labels,
    warn_about_classes,
)
from hf_cnn_ft.data.duplicates import find_duplicates
from hf_cnn_ft.data.label_sets import encode_label_sets, settle_multi_label
from hf_cnn_ft.data.sources import load_raw_dataset, open_stream
from hf_cnn_ft.data.splits import arrange_splits, stream_splits
from hf_cnn_ft.data.streaming import encode_stream_labels, shard_by_shard, to_table
from hf_cnn_ft.data.unlabeled import UNLABELED, unlabeled_pool
from hf_cnn_ft.errors import UserError

logger = logging.getLogger(__name__)


def _truncate(
    split: Dataset | datasets.IterableDataset, limit: int | None, seed: int
) -> Dataset | datasets.IterableDataset:
    if limit is None:
        return split
    if isinstance(split, datasets.IterableDataset):
        return split.take(limit)
    return split if limit >= len(split) else split.shuffle(seed=seed).select(range(limit))


def _only(splits: DatasetDict, names: list[str]) -> DatasetDict:
    return DatasetDict({name: splits[name] for name in names})


def _require_classes(label_names: list[str], source: str) -> None:
    if not label_names:
        raise UserError(f"{source}: no image has a label: fill in the label column (or set data.label_column)")
    if len(label_names) < 2:
        found = f" ('{label_names[0]}')" if label_names else ""
        raise UserError(f"{source}: found a single class{found}; a classifier needs at least two")


def _listed_splits(data_args: DataArguments) -> tuple[DatasetDict, list[str]]:
    raw, base_dir = load_raw_dataset(data_args)
    raw = normalise_columns(raw, data_args, base_dir)
    raw, multi_label = settle_multi_label(raw, data_args)
    raw, label_names = encode_label_sets(raw) if multi_label else encode_labels(raw)
    _require_classes(label_names, data_args.dataset or "")
    counts = sum(label_counts(split, len(label_names)) for split in raw.values())
    warn_about_classes(label_names, dict(zip(label_names, counts.tolist())), data_args.dataset or "")
    splits = arrange_splits(raw, data_args)
    if not data_args.read_test_split:  # set aside before anything opens a file: not checked, hashed nor decoded
        splits = DatasetDict({name: split for name, split in splits.items() if name != "test"})
    return splits, label_names


def _streamed_splits(
    data_args: DataArguments, streams: IterableDatasetDict, fingerprint: str | None
) -> tuple[DatasetDict, list[str]]:
    """The training split stays a stream; the evaluation splits are read into tables (the test split only when
    it will be read), their class names are the classes when the stream declares none."""
    named = stream_splits(streams, data_args)
    named = {name: shard_by_shard(stream, name) for name, stream in named.items()}
    tables = DatasetDict(
        {name: to_table(s, fingerprint and f"{fingerprint}-{name}") for name, s in named.items() if name != "train"}
    )
    tables = normalise_columns(tables, data_args, None)
    tables = DatasetDict({name: t.cast_column(IMAGE_COLUMN, datasets.Image()) for name, t in tables.items()})
    tables, label_names = encode_labels(tables)
    _require_classes(label_names, data_args.dataset or "")
    train = normalise_columns(DatasetDict({"train": named["train"]}), data_args, None)["train"]
    if not isinstance(train.features[LABEL_COLUMN], datasets.ClassLabel):
        logger.warning(
            "%s declares no class names: the classes are the labels of its evaluation splits (%s); training "
            "images with any other label are skipped",
            data_args.dataset,
            ", ".join(label_names),
        )
        train = encode_stream_labels(train, label_names)
    return DatasetDict({"train": train, **tables}), label_names


def load_image_data(data_args: DataArguments, check_images: bool | None = None) -> ImageData:
    """Loads, normalises, splits and checks the dataset that a recipe describes.

    `check_images` (default: data.check_images) decodes every image to drop the unreadable ones; a run
    that builds the decode-once cache passes False, since building it is that decoding pass. A streamed
    training split is neither checked nor hashed: the stream skips an unreadable image when it meets it.
    """
    opened = open_stream(data_args)
    splits, label_names = _streamed_splits(data_args, *opened) if opened else _listed_splits(data_args)
    splits, pool = unlabeled_pool(data_args, splits)
    if pool is not None:  # checked and hashed with the splits, then set apart again
        splits = DatasetDict({**splits, UNLABELED: pool})
    # Tables that are read whole; the training split of a streaming run is read as a stream.
    tables = [n for n, s in splits.items() if isinstance(s, Dataset) and not (n == "train" and data_args.streaming)]
    skipped: list[SkippedImage] = []
    if data_args.check_images if check_images is None else check_images:
        checked, skipped = drop_unreadable_images(_only(splits, tables), data_args.preprocessing_num_workers)
        splits = DatasetDict({**splits, **checked})
    limits = {"train": data_args.max_train_samples, UNLABELED: None}  # the pool has data.max_unlabeled_samples
    splits = DatasetDict(
        {
            name: _truncate(split, limits.get(name, data_args.max_eval_samples), data_args.split_seed)
            for name, split in splits.items()
        }
    )
    hashed = [n for n in splits if isinstance(splits[n], Dataset)]
    remove = data_args.cross_split_duplicates == "remove"
    cleaned, duplicates = find_duplicates(_only(splits, hashed), remove, data_args.preprocessing_num_workers)
    splits = DatasetDict({**splits, **cleaned})
    pool = splits.pop(UNLABELED, None)
    if pool is not None and len(pool) == 0:
        logger.warning("%s: no unlabeled image is left to learn from", data_args.unlabeled or "the unlabeled pool")
        pool = None
    require_usable(splits, data_args.dataset or "")
    slices = None
    if data_args.slice_column:
        slices = {name: list(split[SLICE_COLUMN]) for name, split in splits.items() if isinstance(split, Dataset)}
        splits = DatasetDict({name: split.remove_columns(SLICE_COLUMN) for name, split in splits.items()})
    return ImageData(splits, label_names, data_args.dataset or "", skipped, slices, duplicates.as_dict(), pool)


def require_usable(splits: DatasetDict, source: str) -> None:
    """Every split has images, and the training split at least two classes (a streamed one: in its first
    images)."""
    for name, split in splits.items():
        if len(split_labels(split)) == 0:
            raise UserError(f"{source}: the {name} split has no usable images")
    train = splits["train"]
    if np.count_nonzero(label_counts(train, 0)) < 2:
        raise UserError(f"{source}: the training split holds a single class; a classifier needs at least two")
