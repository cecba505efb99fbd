"""Where images come from: a Hub dataset id, an image folder, a CSV/JSONL/Parquet table or a saved dataset;
with data.streaming, a Hub dataset or a folder of Parquet / WebDataset tar shards is opened as a stream."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from hf_cnn_ft.config.paths import IMAGE_SUFFIXES, TABLE_SUFFIXES, looks_like_local_path
from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import LABEL_COLUMN
from hf_cnn_ft.errors import UserError, first_line


def _load_table(path: Path) -> DatasetDict:
    loader = TABLE_SUFFIXES[path.suffix.lower()]
    kwargs: dict[str, Any] = {"sep": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(loader, data_files={"train": str(path)}, **kwargs)
    except Exception as exc:  # pandas / pyarrow parse errors come in many types
        if _rows_after_header(path, loader) == 0:
            raise UserError(f"{path}: lists no images: add one row per image (image path, label)") from None
        raise UserError(f"{path}: could not read it as {loader.upper()} ({first_line(exc)})") from None


def _rows_after_header(path: Path, loader: str) -> int | None:
    """Non-blank rows of a CSV/TSV (after its header) or JSON lines file; None for other formats."""
    if loader not in ("csv", "json"):
        return None
    with path.open("rb") as handle:
        rows = sum(1 for line in handle if line.strip())
    return max(0, rows - 1) if loader == "csv" else rows


def _count_class_folders(folder: Path) -> list[str]:
    def has_images(d: Path) -> bool:
        return any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.rglob("*") if p.is_file())

    return sorted(d.name for d in folder.iterdir() if d.is_dir() and has_images(d))


def _load_image_folder(folder: Path) -> DatasetDict:
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{folder}: no images found ({str(exc).splitlines()[0]})") from None
    if any(LABEL_COLUMN not in split.column_names for split in loaded.values()):
        classes = _count_class_folders(folder)
        if len(classes) == 1:
            raise UserError(
                f"{folder}: found a single class folder ('{classes[0]}'); a classifier needs images in at least "
                "two class sub-folders"
            )
        raise UserError(f"{folder}: put the images in one sub-folder per class (e.g. {folder}/cat/1.jpg)")
    return loaded


def load_raw_dataset(data_args: DataArguments) -> tuple[DatasetDict, Path | None]:
    """Loads the source as-is. Also returns the folder that relative image paths start from."""
    source = data_args.dataset
    if not source:
        raise UserError("no dataset given: set data.dataset (or --dataset) to a folder, CSV/JSONL file or Hub id")
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() not in TABLE_SUFFIXES:
                raise UserError(f"{path}: expected a folder, or a .csv/.tsv/.jsonl/.json/.parquet file of image paths")
            return _load_table(path), path.parent.resolve()
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, Dataset):
                loaded = DatasetDict({"train": loaded})
            return loaded, path.resolve()
        return _load_image_folder(path), path.resolve()
    if looks_like_local_path(source):
        raise UserError(f"data path {source} does not exist: check data.dataset (a folder, CSV/JSONL file or Hub id)")
    try:
        loaded = datasets.load_dataset(source, data_args.dataset_config, revision=data_args.dataset_revision)
    except Exception as exc:  # the Hub client raises many types; all mean the same to the user
        reason = first_line(exc)
        raise UserError(
            f"could not load dataset '{source}' from the Hub ({reason}); if it is a local folder or file, "
            "check that the path exists"
        ) from None
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    return loaded, None


SHARD_SUFFIXES = (".parquet", ".tar")  # a folder of these, with data.streaming, is read as a stream of shards


def _holds_shards(folder: Path) -> bool:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return any(p.suffix.lower() in SHARD_SUFFIXES for p in files) and not any(
        p.suffix.lower() in IMAGE_SUFFIXES for p in files
    )


def open_stream(data_args: DataArguments) -> tuple[datasets.IterableDatasetDict, str | None] | None:
    """data.streaming on a source that is read as a stream rather than listed: a Hub dataset, or a folder of
    Parquet or WebDataset tar shards (splits named by their files: train-00000.tar, validation-00000.tar...).
    Returns the splits as streams and a fingerprint of the source (None when it may change: an unpinned Hub
    revision), or None for any other source (listed as a table, and its training split streamed from that)."""
    source = data_args.dataset or ""
    if not data_args.streaming or not source:
        return None
    path = Path(source).expanduser()
    if path.exists():
        if not (path.is_dir() and _holds_shards(path)):
            return None
        files = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))
        target, identity = str(path), repr(files)
    elif looks_like_local_path(source):
        return None  # load_raw_dataset says the path does not exist
    else:
        target = source
        identity = (
            repr((source, data_args.dataset_config, data_args.dataset_revision)) if data_args.dataset_revision else None
        )
    try:
        streams = datasets.load_dataset(
            target, data_args.dataset_config, revision=data_args.dataset_revision, streaming=True
        )
    except Exception as exc:  # the Hub client and the packaged readers raise many types; all mean the same here
        reason = first_line(exc)
        raise UserError(
            f"could not open '{source}' as a stream ({reason}); check the Hub id and the network, or point "
            "data.dataset at a folder of Parquet or .tar shards"
        ) from None
    if isinstance(streams, datasets.IterableDataset):
        streams = datasets.IterableDatasetDict({"train": streams})
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16] if identity else None
    return streams, fingerprint
