"""Where images come from: a Hub dataset id, an image folder, a CSV/JSONL/Parquet table or a saved dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from hf_cnn_ft.config.paths import IMAGE_SUFFIXES, TABLE_SUFFIXES, looks_like_local_path
from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import LABEL_COLUMN
from hf_cnn_ft.errors import UserError


def _load_table(path: Path) -> DatasetDict:
    loader = TABLE_SUFFIXES[path.suffix.lower()]
    kwargs: dict[str, Any] = {"sep": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(loader, data_files={"train": str(path)}, **kwargs)
    except Exception as exc:  # pandas / pyarrow parse errors come in many types
        raise UserError(f"{path}: could not read it as {loader.upper()} ({str(exc).splitlines()[0]})") from None


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


def load_raw_dataset(args: DataArguments) -> tuple[DatasetDict, Path | None]:
    """Loads the source as-is. Also returns the folder that relative image paths start from."""
    source = args.dataset
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
        loaded = datasets.load_dataset(source, args.dataset_config, revision=args.dataset_revision)
    except Exception as exc:  # the Hub client raises many types; all mean the same to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"could not load dataset '{source}' from the Hub ({reason}); if it is a local folder or file, "
            "check that the path exists"
        ) from None
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    return loaded, None
