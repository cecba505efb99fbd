"""Loading the dataset that a recipe describes: source -> columns -> labels -> splits -> readable images."""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import (
    LABEL_COLUMN,
    ImageData,
    SkippedImage,
    _encode_labels,
    _normalise_columns,
    drop_unreadable_images,
)
from hf_cnn_ft.data.sources import load_raw_dataset
from hf_cnn_ft.data.splits import arrange_splits
from hf_cnn_ft.errors import UserError


def _truncate(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def load_image_data(args: DataArguments) -> ImageData:
    """Loads, normalises, splits and checks the dataset that a recipe describes."""
    raw, base_dir = load_raw_dataset(args)
    raw = _normalise_columns(raw, args, base_dir)
    raw, label_names = _encode_labels(raw)
    if len(label_names) < 2:
        found = f" ('{label_names[0]}')" if label_names else ""
        raise UserError(f"{args.dataset}: found a single class{found}; a classifier needs at least two")
    splits = arrange_splits(raw, args)
    skipped: list[SkippedImage] = []
    if args.check_images:
        splits, skipped = drop_unreadable_images(splits)
    splits = DatasetDict(
        {
            name: _truncate(
                split, args.max_train_samples if name == "train" else args.max_eval_samples, args.split_seed
            )
            for name, split in splits.items()
        }
    )
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(f"{args.dataset}: the {name} split has no usable images")
    present = np.unique(splits["train"][LABEL_COLUMN])
    if len(present) < 2:
        raise UserError(f"{args.dataset}: the training split holds a single class; a classifier needs at least two")
    return ImageData(splits=splits, label_names=label_names, source=args.dataset or "", skipped=skipped)
