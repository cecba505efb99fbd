"""Loading an image-classification dataset into clean train / validation / test splits.

Whatever the source (a Hub dataset id, a folder of class sub-folders, a CSV/JSONL of image paths
and labels, or a `save_to_disk` folder), the result is a `DatasetDict` whose splits have exactly
two columns: ``image`` (a `datasets.Image`) and ``label`` (a `datasets.ClassLabel`).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict
from PIL import Image, ImageOps

from .errors import UserError
from .recipe import DataArguments

logger = logging.getLogger(__name__)

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
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
LABEL_COLUMN_CANDIDATES = ("label", "labels", "class", "class_name", "category", "target", "fine_label")
VALIDATION_SPLIT_CANDIDATES = ("validation", "valid", "val", "dev")
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


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

    @property
    def evaluation_split(self) -> str:
        """The split of the final, honest evaluation: test when there is one, else validation."""
        return "test" if "test" in self.splits else "validation"

    def class_counts(self, split: str) -> dict[str, int]:
        counts = np.bincount(self.splits[split][LABEL_COLUMN], minlength=len(self.label_names))
        return {name: int(n) for name, n in zip(self.label_names, counts)}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image (grey, 16-bit, float, RGBA, palette, CMYK...) as 8-bit, 3-channel RGB.

    EXIF orientation is applied, and transparent pixels are composited onto white rather than
    left with whatever colour the alpha channel hid.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            high = 1.0
        array = np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _looks_like_local_path(source: str) -> bool:
    return (
        source.startswith(("/", ".", "~"))
        or Path(source).suffix.lower() in TABLE_SUFFIXES
        or source.count("/") > 1
        or os.sep != "/"
        and os.sep in source
    )


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
    if _looks_like_local_path(source):
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


def _pick_column(
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
    kind = datasets.Image if what == "image" else ClassLabel
    typed = [c for c in columns if isinstance(features[c], kind)]
    if len(typed) == 1:
        return typed[0]
    key = "image_column" if what == "image" else "label_column"
    raise UserError(f"no {what} column found in {source} (columns: {', '.join(columns)}); set data.{key}")


def _normalise_columns(raw: DatasetDict, args: DataArguments, base_dir: Path | None) -> DatasetDict:
    """Renames the chosen columns to image/label, drops the rest, and makes images decodable."""
    features = next(iter(raw.values())).features
    image_col = _pick_column(features, args.image_column, IMAGE_COLUMN_CANDIDATES, "image", args.dataset or "")
    label_col = _pick_column(features, args.label_column, LABEL_COLUMN_CANDIDATES, "label", args.dataset or "")
    splits = {}
    for name, split in raw.items():
        split = split.select_columns([image_col, label_col])
        if image_col != IMAGE_COLUMN:
            split = split.rename_column(image_col, IMAGE_COLUMN)
        if label_col != LABEL_COLUMN:
            split = split.rename_column(label_col, LABEL_COLUMN)
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
                f"column '{image_col}' of {args.dataset} holds {feature}, not images or image paths; "
                "set data.image_column"
            )
        splits[name] = split
    return DatasetDict(splits)


def _resolve(path: str | None, base_dir: Path) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base_dir / p)


def _encode_labels(raw: DatasetDict) -> tuple[DatasetDict, list[str]]:
    """Makes the label column a ClassLabel shared by all splits; returns the class names."""
    feature = next(iter(raw.values())).features[LABEL_COLUMN]
    if isinstance(feature, ClassLabel):
        return raw, list(feature.names)
    values = set()
    for split in raw.values():
        values.update(v for v in split.unique(LABEL_COLUMN) if v is not None)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        ordered = sorted(values)
        names = [str(v) for v in ordered]
    else:
        ordered = sorted(values, key=str)
        names = [str(v) for v in ordered]
    index = {v: i for i, v in enumerate(ordered)}
    class_label = ClassLabel(names=names)
    encoded = {}
    for name, split in raw.items():
        missing = sum(v is None for v in split[LABEL_COLUMN])
        if missing:
            split = split.filter(lambda row: row[LABEL_COLUMN] is not None)
            logger.warning("%s split: dropped %d rows with an empty label", name, missing)
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


def _arrange_splits(raw: DatasetDict, args: DataArguments) -> DatasetDict:
    available = list(raw.keys())
    if args.train_split not in raw:
        raise UserError(
            f"split '{args.train_split}' not found in {args.dataset}; splits there are: {', '.join(available)} "
            "(set data.train_split)"
        )
    for wanted, key in ((args.validation_split, "validation_split"), (args.test_split, "test_split")):
        if wanted is not None and wanted not in raw:
            raise UserError(
                f"split '{wanted}' not found in {args.dataset}; splits there are: {', '.join(available)} "
                f"(set data.{key})"
            )
    for key in ("validation_fraction", "test_fraction"):
        value = getattr(args, key)
        if not 0.0 <= value < 1.0:
            raise UserError(f"data.{key} must be in [0, 1), got {value}")
    validation_name = args.validation_split or next((n for n in VALIDATION_SPLIT_CANDIDATES if n in raw), None)
    test_name = args.test_split or ("test" if "test" in raw else None)
    train = raw[args.train_split]

    def carve(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        kept, held = stratified_split(np.asarray(dataset[LABEL_COLUMN]), fraction, seed)
        return dataset.select(kept), dataset.select(held)

    splits: dict[str, Dataset] = {}
    if test_name is not None:
        splits["test"] = raw[test_name]
    elif args.test_fraction > 0:
        train, splits["test"] = carve(train, args.test_fraction, args.split_seed)
    else:
        logger.warning("no test split and data.test_fraction is 0: the final evaluation uses the validation split")
    if validation_name is not None:
        splits["validation"] = raw[validation_name]
    elif args.validation_fraction > 0:
        # Fraction of the original training set, whether or not a test split was carved first.
        fraction = args.validation_fraction / (1.0 - (args.test_fraction if test_name is None else 0.0))
        train, splits["validation"] = carve(train, min(fraction, 0.9), args.split_seed + 1)
    else:
        raise UserError(
            f"{args.dataset} has no validation split and data.validation_fraction is 0; early stopping and "
            "best-model selection need one: set data.validation_fraction (e.g. 0.1) or data.validation_split"
        )
    ordered = {"train": train, "validation": splits["validation"]}
    if "test" in splits:
        ordered["test"] = splits["test"]
    return DatasetDict(ordered)


def unreadable_reason(image: dict[str, Any]) -> str | None:
    """Why an undecoded image entry ({bytes, path}) cannot be used, or None if it decodes."""
    try:
        data = image.get("bytes")
        source = io.BytesIO(data) if data else image.get("path")
        if source is None:
            return "no image data"
        with Image.open(source) as img:
            img.load()
            if img.width < 1 or img.height < 1:
                return "empty image"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
    return None


def drop_unreadable_images(splits: DatasetDict) -> tuple[DatasetDict, list[SkippedImage]]:
    """Decodes every image once; returns the splits without the unreadable ones, and those."""
    skipped: list[SkippedImage] = []
    cleaned = {}
    for name, split in splits.items():
        raw = split.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
        checked = raw.map(
            lambda batch: {"_unreadable": [unreadable_reason(img) or "" for img in batch[IMAGE_COLUMN]]},
            batched=True,
            batch_size=64,
            desc=f"Checking {name} images",
        )
        reasons = checked["_unreadable"]
        bad = [i for i, r in enumerate(reasons) if r]
        if bad:
            images = checked.select(bad)[IMAGE_COLUMN]
            for i, img in zip(bad, images):
                skipped.append(SkippedImage(name, img.get("path") or f"{name}[{i}]", reasons[i]))
            good = [i for i, r in enumerate(reasons) if not r]
            split = split.select(good)
        cleaned[name] = split
    for item in skipped:
        logger.warning("skipping unreadable image %s (%s)", item.path, item.reason)
    return DatasetDict(cleaned), skipped


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
    splits = _arrange_splits(raw, args)
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
