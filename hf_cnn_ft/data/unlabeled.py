"""The unlabeled pool: images a run learns from without their labels (`data.unlabeled`), and the training
images that `data.labels_per_class` moves there.

A folder is searched for images at any depth (no class folders needed); a CSV/JSONL file, a saved dataset or a
Hub dataset gives its image column, every split of it. Whatever labels they carry are dropped. The pool then
goes through the passes the labelled splits go through (the readable check, the duplicate hashes: a copy of a
validation or test image is always removed from it, since training on it would leak the evaluation).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets

from hf_cnn_ft.config.paths import IMAGE_SUFFIXES
from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import (
    IMAGE_COLUMN,
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN,
    is_multi_label,
    normalise_columns,
    pick_column,
    split_labels,
)
from hf_cnn_ft.data.sources import load_raw_dataset
from hf_cnn_ft.errors import UserError

logger = logging.getLogger(__name__)

UNLABELED = "unlabeled"  # the pool's name where it travels beside the splits (checks, hashes, skipped images)


def _images_only(dataset: Dataset) -> Dataset:
    return dataset.select_columns([IMAGE_COLUMN]).cast_column(IMAGE_COLUMN, datasets.Image())


def _folder_pool(folder: Path) -> Dataset:
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"data.unlabeled: {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return _images_only(Dataset.from_dict({IMAGE_COLUMN: files}))


def load_unlabeled_source(data_args: DataArguments) -> Dataset:
    """Every image of data.unlabeled, as one table with an image column."""
    source = data_args.unlabeled or ""
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "dataset_dict.json").exists() and not (path / "state.json").exists():
        return _folder_pool(path)
    raw, base_dir = load_raw_dataset(replace(data_args, dataset=source, dataset_config=None, dataset_revision=None))
    features = next(iter(raw.values())).features
    column = pick_column(features, None, IMAGE_COLUMN_CANDIDATES, "image", source)
    images = normalise_columns(
        DatasetDict({name: split.select_columns([column]) for name, split in raw.items()}),
        replace(data_args, dataset=source, image_column=column, slice_column=None),
        base_dir,
        with_labels=False,
    )
    return _images_only(concatenate_datasets(list(images.values())))


def keep_labels_per_class(train: Dataset, per_class: int, seed: int) -> tuple[Dataset, Dataset]:
    """`per_class` training images of each class (all of a smaller class), drawn with `seed`, and the rest."""
    labels = np.asarray(split_labels(train))
    rng = np.random.default_rng(seed)
    kept = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
    )
    rest = np.setdiff1d(np.arange(len(labels)), kept)
    return train.select(kept), train.select(rest)


def unlabeled_pool(data_args: DataArguments, splits: DatasetDict) -> tuple[DatasetDict, Dataset | None]:
    """The splits (their training split cut to data.labels_per_class) and the unlabeled pool, if any."""
    parts: list[Dataset] = []
    if (data_args.labels_per_class or data_args.unlabeled) and is_multi_label(splits["train"].features[LABEL_COLUMN]):
        raise UserError(
            f"{data_args.dataset}: the label column holds several labels per image, and learning from unlabeled "
            "images pseudo-labels one class per image: remove data.unlabeled / data.labels_per_class"
        )
    if data_args.labels_per_class:
        train, rest = keep_labels_per_class(splits["train"], data_args.labels_per_class, data_args.split_seed)
        logger.info(
            "data.labels_per_class %d: %d labelled training images; the other %d join the unlabeled pool",
            data_args.labels_per_class,
            len(train),
            len(rest),
        )
        splits = DatasetDict({**splits, "train": train})
        parts.append(_images_only(rest))
    if data_args.unlabeled:
        parts.append(load_unlabeled_source(data_args))
    if not parts:
        return splits, None
    pool = concatenate_datasets(parts)
    if data_args.max_unlabeled_samples is not None and data_args.max_unlabeled_samples < len(pool):
        pool = pool.shuffle(seed=data_args.split_seed).select(range(data_args.max_unlabeled_samples))
    return splits, pool
