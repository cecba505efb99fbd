"""Train / validation / test splits: existing ones kept (or pooled and drawn again, data.resplit), missing ones
carved out stratified by class."""

from __future__ import annotations

import logging

import numpy as np
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, concatenate_datasets

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import split_strata
from hf_cnn_ft.errors import UserError

logger = logging.getLogger(__name__)

VALIDATION_SPLIT_CANDIDATES = ("validation", "valid", "val", "dev")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (kept, held out) with `fraction` of every class held out.

    Every class with at least two examples keeps one on each side, so a rare class never
    vanishes from training or from the held-out split.
    """
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _warn_unused_split_settings(data_args: DataArguments, has_validation: bool, has_test: bool) -> None:
    """One line when the recipe sets how to carve splits that the dataset already has."""
    default = DataArguments()
    unused = [
        f"data.{key}"
        for key, fixed in (
            ("validation_fraction", has_validation),
            ("test_fraction", has_test),
            ("split_seed", has_validation and has_test),
        )
        if fixed and getattr(data_args, key) != getattr(default, key)
    ]
    if unused:
        logger.warning(
            "%s has its own %s split(s): %s not used (the splits stay as the dataset gives them)",
            data_args.dataset,
            " and ".join(name for name, fixed in (("validation", has_validation), ("test", has_test)) if fixed),
            ", ".join(unused),
        )


def _require_named_splits(raw: DatasetDict | IterableDatasetDict, data_args: DataArguments) -> None:
    available = list(raw.keys())
    if data_args.train_split not in raw:
        raise UserError(
            f"split '{data_args.train_split}' not found in {data_args.dataset}; splits there are: "
            f"{', '.join(available)} (set data.train_split)"
        )
    for wanted, key in ((data_args.validation_split, "validation_split"), (data_args.test_split, "test_split")):
        if wanted is not None and wanted not in raw:
            raise UserError(
                f"split '{wanted}' not found in {data_args.dataset}; splits there are: {', '.join(available)} "
                f"(set data.{key})"
            )


def stream_splits(streams: IterableDatasetDict, data_args: DataArguments) -> dict[str, IterableDataset]:
    """The splits of a streamed source, as the source names them: a stream cannot be carved by class or pooled
    and drawn again without reading it whole, so the validation split must be the source's own. The test split
    is left out unless it will be read."""
    _require_named_splits(streams, data_args)
    validation_name = data_args.validation_split or next((n for n in VALIDATION_SPLIT_CANDIDATES if n in streams), None)
    if validation_name is None:
        raise UserError(
            f"{data_args.dataset} has no validation split, and a stream cannot be carved into one: give the source one "
            "(files named validation-00000.parquet / .tar beside the train-* ones) or set data.validation_split"
        )
    if data_args.resplit:
        raise UserError("data.resplit draws the splits again from a pool, which a stream is not: remove it")
    named = {"train": streams[data_args.train_split], "validation": streams[validation_name]}
    test_name = data_args.test_split or ("test" if "test" in streams else None)
    if test_name is not None and data_args.read_test_split:
        named["test"] = streams[test_name]
    return named


def arrange_splits(raw: DatasetDict, data_args: DataArguments) -> DatasetDict:
    _require_named_splits(raw, data_args)
    validation_name = data_args.validation_split or next((n for n in VALIDATION_SPLIT_CANDIDATES if n in raw), None)
    test_name = data_args.test_split or ("test" if "test" in raw else None)
    test_fraction, validation_fraction = data_args.test_fraction, data_args.validation_fraction
    if data_args.resplit:
        train, test_fraction, validation_fraction = _pooled(raw, data_args, validation_name, test_name)
        validation_name = test_name = None
    else:
        _warn_unused_split_settings(data_args, validation_name is not None, test_name is not None)
        train = raw[data_args.train_split]

    def carve(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        kept, held = stratified_split(split_strata(dataset), fraction, seed)
        return dataset.select(kept), dataset.select(held)

    splits: dict[str, Dataset] = {}
    if test_name is not None:
        splits["test"] = raw[test_name]
    elif test_fraction > 0:
        train, splits["test"] = carve(train, test_fraction, data_args.split_seed)
    else:
        logger.warning("no test split and data.test_fraction is 0: the final evaluation uses the validation split")
    if validation_name is not None:
        splits["validation"] = raw[validation_name]
    elif validation_fraction > 0:
        # Fraction of the original training set, whether or not a test split was carved first.
        fraction = validation_fraction / (1.0 - (test_fraction if test_name is None else 0.0))
        train, splits["validation"] = carve(train, min(fraction, 0.9), data_args.split_seed + 1)
    else:
        raise UserError(
            f"{data_args.dataset} has no validation split and data.validation_fraction is 0; early stopping and "
            "best-model selection need one: set data.validation_fraction (e.g. 0.1) or data.validation_split"
        )
    if data_args.folds:
        train, splits["validation"] = _fold(concatenate_datasets([train, splits["validation"]]), data_args)
    ordered = {"train": train, "validation": splits["validation"]}
    if "test" in splits:
        ordered["test"] = splits["test"]
    return DatasetDict(ordered)


def _fold(pool: Dataset, data_args: DataArguments) -> tuple[Dataset, Dataset]:
    """data.folds: the training and validation images cut into stratified folds; fold `fold` validates."""
    labels = split_strata(pool)
    rng = np.random.default_rng(data_args.split_seed)
    assigned = np.empty(len(labels), dtype=int)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        assigned[members] = (np.arange(len(members)) + rng.integers(data_args.folds)) % data_args.folds
    held = np.flatnonzero(assigned == data_args.fold)
    return pool.select(np.flatnonzero(assigned != data_args.fold)), pool.select(held)


def _pooled(
    raw: DatasetDict, data_args: DataArguments, validation_name: str | None, test_name: str | None
) -> tuple[Dataset, float, float]:
    """data.resplit: the dataset's own train, validation and test images in one pool, and the shares of
    the pool that its own test and validation splits hold (the fractions where it has none), so a
    resampled split has the shipped split's sizes."""
    names = [data_args.train_split, *(name for name in (validation_name, test_name) if name is not None)]
    pool = concatenate_datasets([raw[name] for name in names])
    test_fraction = len(raw[test_name]) / len(pool) if test_name else data_args.test_fraction
    validation_fraction = len(raw[validation_name]) / len(pool) if validation_name else data_args.validation_fraction
    logger.info(
        "data.resplit: %s's %s (%d images) drawn again with split_seed %d",
        data_args.dataset,
        " + ".join(names),
        len(pool),
        data_args.split_seed,
    )
    return pool, test_fraction, validation_fraction
