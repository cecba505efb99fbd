"""The loaded splits: exactly two columns, ``image`` (a `datasets.Image`) and ``label`` (a `ClassLabel`);
the values of `data.slice_column`, when there is one, travel beside them in `ImageData.slices`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, DatasetDict

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.images import short_side, unreadable_reason
from hf_cnn_ft.errors import UserError

logger = logging.getLogger(__name__)


IMAGE_COLUMN = "image"


LABEL_COLUMN = "label"


SLICE_COLUMN = "slice"  # data.slice_column's values, as strings, until load_image_data moves them aside


IMAGE_COLUMN_CANDIDATES = (
    "image",
    "img",
    "image_path",
    "path",
    "file",
    "filepath",
    "file_path",
    "file_name",
    "filename",
)


LABEL_COLUMN_CANDIDATES = (
    "label",
    "labels",
    "class",
    "class_name",
    "category",
    "target",
    "fine_label",
    "cls",
    "tags",
    "attributes",
)


LABEL_SAMPLE = 2000  # the first labels of a streamed split, for class counts: a stream is not read whole for them


def split_labels(split: datasets.Dataset | datasets.IterableDataset) -> list[int]:
    """A split's labels as a list: all of a table's (read as one column, not item by item: a datasets Column
    reads the table anew for every item asked of it), the first LABEL_SAMPLE of a stream's."""
    if isinstance(split, datasets.IterableDataset):
        return [row[LABEL_COLUMN] for row in split.select_columns([LABEL_COLUMN]).take(LABEL_SAMPLE)]
    return split.select_columns([LABEL_COLUMN])[:][LABEL_COLUMN]


def is_multi_label(feature: Any) -> bool:
    """Whether a label feature holds several labels per image (data/label_sets.py)."""
    return isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList))


def targets_of(label_lists: list[list[int]], num_labels: int) -> np.ndarray:
    """Multi-hot rows (images x labels, float32) of label index lists."""
    targets = np.zeros((len(label_lists), num_labels), dtype=np.float32)
    for row, labels in enumerate(label_lists):
        targets[row, labels] = 1.0
    return targets


def label_counts(split: datasets.Dataset | datasets.IterableDataset, num_labels: int) -> np.ndarray:
    """Images per class (of a multi-label split: per label)."""
    labels = split_labels(split)
    if is_multi_label(split.features[LABEL_COLUMN]):
        labels = [label for row in labels for label in row]
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_labels)


def split_targets(split: datasets.Dataset) -> np.ndarray:
    """A multi-label split's labels as multi-hot rows."""
    return targets_of(split_labels(split), split.features[LABEL_COLUMN].feature.num_classes)


def split_strata(split: datasets.Dataset) -> np.ndarray:
    """One class per image for a stratified split: its label, or of a multi-label image its rarest label, so that
    every label reaches each side of a split in about the asked share (the rarest most exactly), as far as one
    key per image allows."""
    labels = split_labels(split)
    if not is_multi_label(split.features[LABEL_COLUMN]):
        return np.asarray(labels)
    counts = split_targets(split).sum(0)
    return np.array([min(row, key=lambda label: (counts[label], label)) for row in labels], dtype=np.int64)


@dataclass
class SkippedImage:
    split: str
    path: str
    reason: str


@dataclass
class ImageData:
    """The loaded splits and what was learnt while loading them."""

    splits: DatasetDict
    label_names: list[str]
    source: str
    skipped: list[SkippedImage] = field(default_factory=list)
    slices: dict[str, list[str]] | None = None  # split -> each image's data.slice_column value
    duplicates: dict[str, Any] | None = None  # byte-identical copies found (data/duplicates.py)
    unlabeled: datasets.Dataset | None = None  # images without labels (data.unlabeled, data.labels_per_class)

    @property
    def evaluation_split(self) -> str:
        """The split of the final, honest evaluation: test when there is one, else validation."""
        return "test" if "test" in self.splits else "validation"

    def typical_short_side(self, sample: int = 64) -> int | None:
        """The median shorter edge, in pixels, of up to `sample` training images spread over the split."""
        train = self.splits["train"].cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
        if isinstance(train, datasets.IterableDataset):  # a stream: its first images
            entries = [row[IMAGE_COLUMN] for row in train.take(sample)]
        else:
            entries = train.select(np.unique(np.linspace(0, len(train) - 1, num=min(sample, len(train)), dtype=int)))
            entries = entries[IMAGE_COLUMN]
        sides = [side for entry in entries if (side := short_side(entry)) is not None]
        return int(np.median(sides)) if sides else None

    def split_sizes(self) -> dict[str, int | None]:
        """Images per split; None for a streamed split, whose length is not known without reading it whole."""
        return {name: len(s) if isinstance(s, datasets.Dataset) else None for name, s in self.splits.items()}

    @property
    def multi_label(self) -> bool:
        """Several labels per image (data/label_sets.py)."""
        return is_multi_label(self.splits["train"].features[LABEL_COLUMN])

    def class_counts(self, split: str) -> dict[str, int]:
        """Images per class (of a multi-label split: per label); of a streamed split, in its first LABEL_SAMPLE
        images."""
        counts = label_counts(self.splits[split], len(self.label_names))
        return {name: int(n) for name, n in zip(self.label_names, counts)}


def pick_column(
    features: datasets.Features, wanted: str | None, candidates: tuple[str, ...], what: str, source: str
) -> str:
    columns = list(features)
    if wanted is not None:
        if wanted not in columns:
            raise UserError(
                f"{what} column '{wanted}' not found in {source}; the columns there are: {', '.join(columns)}"
            )
        return wanted
    for name in candidates:
        if name in columns:
            return name
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]

    def typed_as_wanted(feature: Any) -> bool:
        if what == "image":
            return isinstance(feature, datasets.Image)
        return isinstance(feature, ClassLabel) or (is_multi_label(feature) and isinstance(feature.feature, ClassLabel))

    typed = [c for c in columns if typed_as_wanted(features[c])]
    if len(typed) == 1:
        return typed[0]
    key = "image_column" if what == "image" else "label_column"
    raise UserError(f"no {what} column found in {source} (columns: {', '.join(columns)}); set data.{key}")


def normalise_columns(
    raw: DatasetDict, data_args: DataArguments, base_dir: Path | None, with_labels: bool = True
) -> DatasetDict:
    """Renames the chosen columns to image/label (image alone without `with_labels`), drops the rest, and
    makes images decodable."""
    features = next(iter(raw.values())).features
    image_col = pick_column(features, data_args.image_column, IMAGE_COLUMN_CANDIDATES, "image", data_args.dataset or "")
    kept = {image_col: IMAGE_COLUMN}
    if with_labels:
        label_col = pick_column(
            features, data_args.label_column, LABEL_COLUMN_CANDIDATES, "label", data_args.dataset or ""
        )
        kept[label_col] = LABEL_COLUMN
    if data_args.slice_column:
        kept[pick_column(features, data_args.slice_column, (), "slice", data_args.dataset or "")] = SLICE_COLUMN
    splits = {}
    for name, split in raw.items():
        split = split.select_columns(list(kept))
        split = split.rename_columns({old: new for old, new in kept.items() if old != new})
        if SLICE_COLUMN in split.column_names:
            split = split.cast_column(SLICE_COLUMN, datasets.Value("string"))
        feature = split.features[IMAGE_COLUMN]
        if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            if base_dir is not None:
                split = split.map(
                    lambda batch: {IMAGE_COLUMN: [_resolve(p, base_dir) for p in batch[IMAGE_COLUMN]]},
                    batched=True,
                    desc="Resolving image paths",
                )
            split = split.cast_column(IMAGE_COLUMN, datasets.Image())
        elif not isinstance(feature, datasets.Image):
            raise UserError(
                f"column '{image_col}' of {data_args.dataset} holds {feature}, not images or image paths; "
                "set data.image_column"
            )
        splits[name] = split
    return DatasetDict(splits)


def _resolve(path: str | None, base_dir: Path) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base_dir / p)


def _blank(label: Any) -> bool:
    return label is None or (isinstance(label, str) and not label.strip())


def warn_about_classes(label_names: list[str], counts: dict[str, int], source: str) -> None:
    """Classes that are probably a labelling mistake: names that differ only by case, and classes with a single
    image (which cannot be both learnt and tested)."""
    by_lowercase: dict[str, list[str]] = {}
    for name in label_names:
        by_lowercase.setdefault(name.lower(), []).append(name)
    for names in by_lowercase.values():
        if len(names) > 1:
            logger.warning(
                "%s: the classes %s differ only by case and are trained as different classes; if they are one, "
                "fix the labels",
                source,
                " and ".join(f"'{n}'" for n in names),
            )
    for name in label_names:
        if counts.get(name, 0) == 1:
            logger.warning(
                "%s: class '%s' has a single image: it cannot be both learnt and tested; add images or leave it out",
                source,
                name,
            )


def encode_labels(raw: DatasetDict) -> tuple[DatasetDict, list[str]]:
    """Makes the label column a ClassLabel shared by all splits; returns the class names."""
    feature = next(iter(raw.values())).features[LABEL_COLUMN]
    if isinstance(feature, ClassLabel):
        return raw, list(feature.names)
    if is_multi_label(feature):  # a listed source's lists were settled by data/label_sets.py
        raise UserError("a streamed dataset with several labels per image is not supported: remove data.streaming")
    values = set()
    for split in raw.values():
        values.update(v for v in split.unique(LABEL_COLUMN) if not _blank(v))
    # A numeric label column with one blank cell is read as floats: 0.0 and 1.0 are the classes 0 and 1.
    whole = all(isinstance(v, (float, np.floating)) and float(v).is_integer() for v in values)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values) or whole:
        ordered = sorted(values)
        names = [str(int(v)) for v in ordered]
    else:
        ordered = sorted(values, key=str)
        names = [str(v) for v in ordered]
    index = {v: i for i, v in enumerate(ordered)}
    class_label = ClassLabel(names=names)
    encoded = {}
    for name, split in raw.items():
        missing = sum(_blank(v) for v in split_labels(split))
        if missing:
            split = split.filter(lambda rows: [not _blank(v) for v in rows], input_columns=LABEL_COLUMN, batched=True)
            logger.warning("%s split: skipped %d rows with an empty label", name, missing)
        features = split.features.copy()
        features[LABEL_COLUMN] = class_label
        split = split.map(
            lambda batch: {LABEL_COLUMN: [index[v] for v in batch[LABEL_COLUMN]]},
            batched=True,
            features=features,
            desc="Encoding labels",
        )
        encoded[name] = split
    return DatasetDict(encoded), names


PARALLEL_FROM = 2000  # images in a split below which starting worker processes costs more than it saves
WRITER_BATCH = 256  # rows a pass holds before writing them out: its memory, whatever the dataset's size


def preparation_workers(requested: int | None, rows: int) -> int | None:
    """Processes for one pass over a split's images (data.preprocessing_num_workers); None: this process."""
    if requested is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        requested = min(8, cores) if rows >= PARALLEL_FROM else 1
    workers = min(requested, rows)
    return workers if workers > 1 else None


def _reasons(batch: list[dict]) -> dict[str, list[str]]:
    return {"_unreadable": [unreadable_reason(image) or "" for image in batch]}


def drop_unreadable_images(splits: DatasetDict, workers: int | None = None) -> tuple[DatasetDict, list[SkippedImage]]:
    """Decodes every image once; returns the splits without the unreadable ones, and those."""
    skipped: list[SkippedImage] = []
    cleaned = {}
    for name, split in splits.items():
        raw = split.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
        reasons = raw.map(
            _reasons,
            batched=True,
            batch_size=64,
            input_columns=[IMAGE_COLUMN],
            remove_columns=raw.column_names,  # the pass writes one reason per image, not a copy of the images
            num_proc=preparation_workers(workers, len(raw)),
            writer_batch_size=WRITER_BATCH,
            desc=f"Checking {name} images",
        )[:]["_unreadable"]
        bad = [i for i, r in enumerate(reasons) if r]
        if bad:
            for i, img in zip(bad, raw.select(bad)[IMAGE_COLUMN]):
                skipped.append(SkippedImage(name, img.get("path") or f"{name}[{i}]", reasons[i]))
            split = split.select([i for i, r in enumerate(reasons) if not r])
        cleaned[name] = split
    report_skipped(skipped)
    return DatasetDict(cleaned), skipped


def report_skipped(skipped: list[SkippedImage]) -> None:
    """One warning per unreadable image; whichever pass found it is the only one to say so."""
    for item in skipped:
        logger.warning("skipping unreadable image %s (%s)", item.path, item.reason)
