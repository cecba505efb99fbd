"""Loading the dataset that a recipe describes: source -> columns -> labels -> splits -> readable images."""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import (
    LABEL_COLUMN,
    SLICE_COLUMN,
    ImageData,
    SkippedImage,
    _encode_labels,
    _normalise_columns,
    drop_unreadable_images,
)
from hf_cnn_ft.data.duplicates import find_duplicates
from hf_cnn_ft.data.sources import load_raw_dataset
from hf_cnn_ft.data.splits import arrange_splits
from hf_cnn_ft.errors import UserError


def _truncate(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def load_image_data(args: DataArguments, check_images: bool | None = None) -> ImageData:
    """Loads, normalises, splits and checks the dataset that a recipe describes.

    `check_images` (default: data.check_images) decodes every image to drop the unreadable ones; a run
    that builds the decode-once cache passes False, since building it is that decoding pass.
    """
    raw, base_dir = load_raw_dataset(args)
    raw = _normalise_columns(raw, args, base_dir)
    raw, label_names = _encode_labels(raw)
    if len(label_names) < 2:
        found = f" ('{label_names[0]}')" if label_names else ""
        raise UserError(f"{args.dataset}: found a single class{found}; a classifier needs at least two")
    splits = arrange_splits(raw, args)
    if not args.read_test_split:  # set aside before anything opens a file: not checked, hashed nor decoded
        splits = DatasetDict({name: split for name, split in splits.items() if name != "test"})
    skipped: list[SkippedImage] = []
    if args.check_images if check_images is None else check_images:
        # A stream meets its training images as it reads them, and skips the unreadable ones then.
        checked = DatasetDict({name: split for name, split in splits.items() if name != "train" or not args.streaming})
        checked, skipped = drop_unreadable_images(checked, args.preprocessing_num_workers)
        splits = DatasetDict({**splits, **checked})
    splits = DatasetDict(
        {
            name: _truncate(
                split, args.max_train_samples if name == "train" else args.max_eval_samples, args.split_seed
            )
            for name, split in splits.items()
        }
    )
    remove = args.cross_split_duplicates == "remove"
    splits, duplicates = find_duplicates(splits, remove, args.preprocessing_num_workers)
    require_usable(splits, args.dataset or "")
    slices = None
    if args.slice_column:
        slices = {name: list(split[SLICE_COLUMN]) for name, split in splits.items()}
        splits = DatasetDict({name: split.remove_columns(SLICE_COLUMN) for name, split in splits.items()})
    return ImageData(splits, label_names, args.dataset or "", skipped, slices, duplicates.as_dict())


def require_usable(splits: DatasetDict, source: str) -> None:
    """Every split has images, and the training split at least two classes."""
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(f"{source}: the {name} split has no usable images")
    if len(np.unique(splits["train"][LABEL_COLUMN])) < 2:
        raise UserError(f"{source}: the training split holds a single class; a classifier needs at least two")
