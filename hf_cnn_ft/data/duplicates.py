"""Byte-identical images, found by content hash: copies inside a split are reported; a validation or test
image that is a copy of a training image (or a test image copying a validation one) would score the
model on what it has seen, so it is reported loudly and, by default, removed from the evaluation side."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from hf_cnn_ft.data.dataset import IMAGE_COLUMN, WRITER_BATCH, preparation_workers

logger = logging.getLogger(__name__)

# Earlier splits win: a copy is removed from the later one, the side that is evaluated. The unlabeled pool comes
# last and always loses its copies: training on a copy of a test image would leak it.
SPLIT_ORDER = ("train", "validation", "test", "unlabeled")
ALWAYS_REMOVED_FROM = ("unlabeled",)
SHOWN = 3  # examples named in a warning


def _digest(image: dict[str, Any]) -> str:
    """A hash of the image's bytes; a file that cannot be read gets a name of its own instead, so it is the copy
    of nothing (the pass that decodes the images skips and reports it)."""
    data = image.get("bytes")
    if data is None:
        try:
            data = Path(image["path"]).read_bytes() if image.get("path") else b""
        except OSError:
            return f"unreadable:{image['path']}"
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def content_hashes(split: Dataset, name: str, workers: int | None = None) -> tuple[list[str], list[str]]:
    """A hash of each image's file bytes, and a name for it (its path, or split[index]), in split order."""
    raw = split.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
    hashed = raw.map(
        lambda batch, indices: {
            "_hash": [_digest(image) for image in batch[IMAGE_COLUMN]],
            "_name": [image.get("path") or f"{name}[{i}]" for image, i in zip(batch[IMAGE_COLUMN], indices)],
        },
        batched=True,
        with_indices=True,
        batch_size=256,
        remove_columns=raw.column_names,
        num_proc=preparation_workers(workers, len(raw)),
        writer_batch_size=WRITER_BATCH,
        desc=f"Hashing the {name} images",
    )
    columns = hashed[:]  # plain lists: a datasets Column reads the table anew for every item asked of it
    return columns["_hash"], columns["_name"]


@dataclass
class DuplicateReport:
    within: dict[str, int] = field(default_factory=dict)  # split -> images that copy another of the same split
    across: dict[str, int] = field(default_factory=dict)  # split -> images that copy one of an earlier split
    removed: bool = False
    examples: dict[str, list[str]] = field(default_factory=dict)  # split -> a few "test/a.jpg = train/b.jpg"

    def as_dict(self) -> dict[str, Any]:
        return {"within": self.within, "across": self.across, "removed": self.removed, "examples": self.examples}


def find_duplicates(
    splits: DatasetDict, remove_across: bool = True, workers: int | None = None
) -> tuple[DatasetDict, DuplicateReport]:
    """Reports copies inside each split and across splits; returns the splits with the cross-split copies
    removed from the evaluation side when `remove_across`."""
    report, seen, cleaned = DuplicateReport(removed=remove_across), {}, {}
    for name in sorted(splits, key=lambda n: SPLIT_ORDER.index(n) if n in SPLIT_ORDER else len(SPLIT_ORDER)):
        split = splits[name]
        hashes, names = content_hashes(split, name, workers)
        first_here: dict[str, int] = {}
        copies: list[int] = []
        for index, digest in enumerate(hashes):
            if digest in seen:
                copies.append(index)
                report.examples.setdefault(name, []).append(f"{names[index]} = {seen[digest]}")
            elif digest in first_here:
                report.within[name] = report.within.get(name, 0) + 1
            else:
                first_here[digest] = index
        if copies:
            report.across[name] = len(copies)
            if remove_across or name in ALWAYS_REMOVED_FROM:
                kept = set(copies)
                split = split.select([i for i in range(len(split)) if i not in kept])
        for digest, index in first_here.items():
            seen.setdefault(digest, names[index])
        cleaned[name] = split
    report.examples = {name: shown[:SHOWN] for name, shown in report.examples.items()}
    _warn(report)
    return DatasetDict(cleaned), report


def _warn(report: DuplicateReport) -> None:
    for name, count in report.within.items():
        logger.info("%s split: %d images are byte-identical copies of other %s images", name, count, name)
    for name, count in report.across.items():
        if name in ALWAYS_REMOVED_FROM:
            action = "removed from the pool (a copy of a validation or test image would leak it into training)"
        elif report.removed:
            action = f"removed from {name} (data.cross_split_duplicates: keep keeps them)"
        else:
            action = f"kept in {name}: its figures are optimistic"
        logger.warning(
            "%d %s images are byte-identical to images of an earlier split (%s): %s",
            count,
            name,
            "; ".join(report.examples[name]),
            action,
        )
