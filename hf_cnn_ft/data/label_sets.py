"""Multi-label datasets: a label column holding several labels per image.

The labels come as lists (a JSON lines list, a Hub sequence of ClassLabel) or as one text cell cut by
`data.label_separator`; either way the loaded splits hold them as a list of ClassLabel indices, and the model
sees a multi-hot row (data/dataset.py `targets_of`)."""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, DatasetDict

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import LABEL_COLUMN, is_multi_label
from hf_cnn_ft.errors import UserError, shown

logger = logging.getLogger(__name__)


def settle_multi_label(raw: DatasetDict, data_args: DataArguments) -> tuple[DatasetDict, bool]:
    """Whether the run is multi-label (data.multi_label, or inferred from the column), with the label column as
    lists when it is: a separated text cell is cut, a single label becomes a list of one."""
    source = data_args.dataset or ""
    feature = next(iter(raw.values())).features[LABEL_COLUMN]
    holds_lists = is_multi_label(feature)
    if holds_lists and data_args.multi_label is False:
        raise UserError(
            f"{source}: the label column holds lists of labels, but data.multi_label is false: set it to true (or "
            "remove it) to train a multi-label classifier, or give one label per image"
        )
    separator = data_args.label_separator
    if not (holds_lists or separator or data_args.multi_label):
        return raw, False
    if holds_lists:
        _refuse_separator_in_names(raw, feature, separator, source)
        lists = raw
    else:
        lists = DatasetDict({name: _as_lists(split, separator, name) for name, split in raw.items()})
    _refuse_empty_lists(lists, source)
    how = "data.multi_label" if data_args.multi_label else "data.label_separator" if separator else "inferred: lists"
    logger.info("multi-label: several labels per image, one sigmoid and one threshold per label (%s)", how)
    return lists, True


def _as_lists(split: datasets.Dataset, separator: str | None, name: str) -> datasets.Dataset:
    feature = split.features[LABEL_COLUMN]
    text = feature.int2str if isinstance(feature, ClassLabel) else str

    def cut(values: list[Any]) -> list[list[Any] | None]:
        if separator is None:
            return [None if value is None else [value] for value in values]
        return [None if value is None else [part.strip() for part in text(value).split(separator)] for value in values]

    element = feature if separator is None else datasets.Value("string")
    features = split.features.copy()
    features[LABEL_COLUMN] = datasets.List(element)
    return split.map(
        lambda batch: {LABEL_COLUMN: cut(batch[LABEL_COLUMN])},
        batched=True,
        features=features,
        desc=f"Reading the {name} labels as lists",
    )


def _refuse_separator_in_names(raw: DatasetDict, feature: Any, separator: str | None, source: str) -> None:
    if separator is None:
        return
    element = feature.feature
    names = element.names if isinstance(element, ClassLabel) else _distinct(raw)
    clashing = [name for name in names if separator in str(name)]
    if clashing:
        raise UserError(
            f"{source}: the label {shown(str(clashing[0]))} contains data.label_separator {separator!r}: the "
            "labels are lists already, so remove data.label_separator (or rename that label)"
        )


def _distinct(raw: DatasetDict) -> list[Any]:
    values: set[Any] = set()
    for split in raw.values():
        for row in split.select_columns([LABEL_COLUMN])[:][LABEL_COLUMN]:
            values.update(v for v in row or [] if v is not None)
    return sorted(values, key=str)


def _refuse_empty_lists(lists: DatasetDict, source: str) -> None:
    for name, split in lists.items():
        for row, labels in enumerate(split.select_columns([LABEL_COLUMN])[:][LABEL_COLUMN]):
            if labels is not None and not [v for v in labels if v is not None and str(v).strip()]:
                raise UserError(
                    f"{source}: row {row + 1} of the {name} split has an empty label list: give every image at least "
                    "one label, or leave the row out"
                )


def encode_label_sets(lists: DatasetDict) -> tuple[DatasetDict, list[str]]:
    """Makes the label column a list of one ClassLabel shared by all splits; returns the label names. Rows
    without labels (a blank cell) are skipped and counted."""
    element = next(iter(lists.values())).features[LABEL_COLUMN].feature
    if isinstance(element, ClassLabel):
        return lists, list(element.names)
    values = _distinct(lists)
    numeric = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    ordered = sorted(values) if numeric else sorted({str(v).strip() for v in values})
    index = {v: i for i, v in enumerate(ordered)}
    names = [str(v) for v in ordered]
    key = (lambda v: v) if numeric else (lambda v: str(v).strip())
    encoded = {}
    for name, split in lists.items():
        blank = sum(labels is None for labels in split.select_columns([LABEL_COLUMN])[:][LABEL_COLUMN])
        if blank:
            split = split.filter(lambda rows: [v is not None for v in rows], input_columns=LABEL_COLUMN, batched=True)
            logger.warning("%s split: skipped %d rows with an empty label", name, blank)
        features = split.features.copy()
        features[LABEL_COLUMN] = datasets.List(ClassLabel(names=names))
        split = split.map(
            lambda batch: {LABEL_COLUMN: [sorted({index[key(v)] for v in row}) for row in batch[LABEL_COLUMN]]},
            batched=True,
            features=features,
            desc="Encoding labels",
        )
        encoded[name] = split
    return DatasetDict(encoded), names
