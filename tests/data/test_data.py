import csv
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import drop_unreadable_images
from hf_cnn_ft.data.images import to_rgb
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.splits import stratified_split
from hf_cnn_ft.errors import UserError


def _image(seed: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def test_image_folder_gives_three_stratified_splits_with_class_names(shapes_dir):
    data = load_image_data(DataArguments(dataset=str(shapes_dir), validation_fraction=0.2, test_fraction=0.2))
    assert data.label_names == ["blue_triangle", "green_square", "red_disc"]
    assert list(data.splits) == ["train", "validation", "test"]
    assert {name: len(s) for name, s in data.splits.items()} == {"train": 72, "validation": 24, "test": 24}
    # Stratified: every class is equally represented in each held-out split.
    assert set(data.class_counts("test").values()) == {8}
    assert set(data.class_counts("validation").values()) == {8}
    assert data.splits["train"].column_names == ["image", "label"]


def test_splits_are_seeded_and_disjoint(shapes_dir):
    def paths(seed):
        data = load_image_data(DataArguments(dataset=str(shapes_dir), split_seed=seed))
        return {
            name: sorted(img["path"] for img in split.cast_column("image", datasets.Image(decode=False))["image"])
            for name, split in data.splits.items()
        }

    first, again, other = paths(1), paths(1), paths(2)
    assert first == again
    assert first["test"] != other["test"]
    assert not set(first["train"]) & set(first["test"]) and not set(first["train"]) & set(first["validation"])


def test_stratified_split_keeps_rare_classes_on_both_sides():
    labels = np.array([0] * 50 + [1] * 2)
    kept, held = stratified_split(labels, 0.1, seed=0)
    assert sorted(np.concatenate([kept, held])) == list(range(52))
    assert (labels[held] == 1).sum() == 1 and (labels[kept] == 1).sum() == 1
    assert (labels[held] == 0).sum() == 5


def test_csv_with_relative_paths_and_string_labels(tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(12):
        name = f"imgs/{i}.png"
        _image(i).save(tmp_path / name)
        rows.append({"file": name, "kind": ["ok", "defect", "scratch"][i % 3]})
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    data = load_image_data(
        DataArguments(
            dataset=str(tmp_path / "labels.csv"), label_column="kind", test_fraction=0.25, validation_fraction=0.25
        )
    )
    assert data.label_names == ["defect", "ok", "scratch"]
    assert sum(len(s) for s in data.splits.values()) == 12
    assert data.splits["train"][0]["image"].size == (16, 16)


def test_jsonl_and_missing_files_are_skipped_and_reported(tmp_path):
    lines = []
    for i in range(9):
        _image(i).save(tmp_path / f"{i}.jpg")
        lines.append({"image": f"{i}.jpg", "label": i % 3})
    lines.append({"image": "gone.jpg", "label": 0})
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    data = load_image_data(
        DataArguments(dataset=str(tmp_path / "data.jsonl"), test_fraction=0.0, validation_fraction=0.3)
    )
    assert data.label_names == ["0", "1", "2"]
    assert [Path(s.path).name for s in data.skipped] == ["gone.jpg"]
    assert sum(len(s) for s in data.splits.values()) == 9


def test_saved_dataset_with_existing_splits_is_used_as_is(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["cat", "dog"])})

    def split(n, offset):
        return datasets.Dataset.from_dict(
            {"img": [_image(offset + i) for i in range(n)], "y": [i % 2 for i in range(n)]}, features=features
        )

    datasets.DatasetDict({"train": split(10, 0), "valid": split(4, 100), "test": split(6, 200)}).save_to_disk(
        tmp_path / "saved"
    )
    data = load_image_data(DataArguments(dataset=str(tmp_path / "saved")))
    assert data.label_names == ["cat", "dog"]
    assert {name: len(s) for name, s in data.splits.items()} == {"train": 10, "validation": 4, "test": 6}


def test_existing_train_test_folders_are_respected(tmp_path):
    for offset, (split, n) in enumerate((("train", 8), ("test", 4))):
        for label, cls in enumerate(("a", "b")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                _image(1000 * offset + 100 * label + i).save(tmp_path / split / cls / f"{i}.png")
    data = load_image_data(DataArguments(dataset=str(tmp_path), validation_fraction=0.25))
    assert len(data.splits["test"]) == 8
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 16


def test_split_settings_for_splits_the_dataset_has_are_one_warning(tmp_path, caplog):
    _fixed_split_folder(tmp_path, per_class=4)
    load_image_data(DataArguments(dataset=str(tmp_path)))
    assert "not used" not in caplog.text  # the defaults say nothing
    data = load_image_data(DataArguments(dataset=str(tmp_path), split_seed=7, test_fraction=0.3))
    warnings = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(warnings) == 1
    assert "own validation and test split(s): data.test_fraction, data.split_seed not used" in warnings[0]
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 8, "validation": 8, "test": 8}


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (8, 8), 200),
        lambda: Image.new("1", (8, 8), 1),
        lambda: Image.new("P", (8, 8), 3),
        lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
        lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 128)),
        lambda: Image.new("LA", (8, 8), (10, 0)),
        lambda: Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)),
        lambda: Image.new("I", (8, 8), 40000),
        lambda: Image.new("F", (8, 8), 0.5),
    ],
)
def test_every_image_mode_becomes_8bit_rgb(make):
    image = make()
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    pixels = np.asarray(rgb)
    assert pixels.dtype == np.uint8


def test_conversion_keeps_meaning_of_16bit_and_transparency():
    white16 = to_rgb(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)))
    assert np.asarray(white16).min() == 255
    mid16 = to_rgb(Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)))
    assert 126 <= np.asarray(mid16).mean() <= 130
    transparent = to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert np.asarray(transparent).min() == 255  # composited onto white, not black
    cmyk_red = np.asarray(to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0))))[0, 0]
    assert cmyk_red[0] > 200 and cmyk_red[1] < 50


def test_corrupt_images_are_found_before_training(tmp_path, shapes_dir, copy_of):
    folder = copy_of(shapes_dir)
    (folder / "red_disc" / "notes.png").write_text("this is not an image")
    buffer = io.BytesIO()
    _image(0, 64).save(buffer, "JPEG")
    (folder / "green_square" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    data = load_image_data(DataArguments(dataset=str(folder)))
    assert sorted(Path(s.path).name for s in data.skipped) == ["cut.jpg", "notes.png"]
    assert all(s.reason for s in data.skipped)
    assert sum(len(s) for s in data.splits.values()) == 120


def test_drop_unreadable_images_keeps_order_of_the_good_ones(tmp_path):
    good = tmp_path / "good.png"
    _image(1).save(good)
    dataset = datasets.Dataset.from_dict(
        {"image": [str(good), str(tmp_path / "missing.png"), str(good)], "label": [0, 1, 0]}
    )
    dataset = dataset.cast_column("image", datasets.Image())
    cleaned, skipped = drop_unreadable_images(datasets.DatasetDict({"train": dataset}))
    assert cleaned["train"]["label"] == [0, 0]
    assert len(skipped) == 1 and skipped[0].path.endswith("missing.png")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: DataArguments(dataset=str(p / "nope")), "does not exist"),
        (lambda p: DataArguments(dataset=str(p), label_column="kind"), "label column 'kind' not found"),
        (lambda p: DataArguments(dataset=str(p), train_split="training"), "split 'training' not found"),
        (lambda p: DataArguments(dataset=str(p), validation_fraction=0.0), "validation_fraction is 0"),
    ],
)
def test_bad_data_settings_raise_one_clear_error(shapes_dir, setup, message):
    with pytest.raises(UserError) as info:
        load_image_data(setup(shapes_dir))
    assert message in str(info.value)


def test_label_column_error_lists_the_columns_there_are(shapes_dir):
    with pytest.raises(UserError) as info:
        load_image_data(DataArguments(dataset=str(shapes_dir), label_column="kind"))
    assert "the columns there are: image, label" in str(info.value)


def test_single_class_folder_is_refused(tmp_path):
    (tmp_path / "cats").mkdir()
    for i in range(3):
        _image(i).save(tmp_path / "cats" / f"{i}.png")
    with pytest.raises(UserError) as info:
        load_image_data(DataArguments(dataset=str(tmp_path)))
    assert "single class folder ('cats')" in str(info.value)


def test_zero_test_fraction_evaluates_on_validation(shapes_dir):
    data = load_image_data(DataArguments(dataset=str(shapes_dir), test_fraction=0.0))
    assert list(data.splits) == ["train", "validation"]
    assert data.evaluation_split == "validation"


def test_unreachable_hub_dataset_is_one_clear_error():
    with pytest.raises(UserError) as info:
        load_image_data(DataArguments(dataset="someone/no-such-dataset"))
    assert "could not load dataset 'someone/no-such-dataset' from the Hub" in str(info.value)


def _fixed_split_folder(root: Path, per_class: int = 6) -> Path:
    """train/validation/test folders of distinct images, classes a and b."""
    for offset, split in enumerate(("train", "validation", "test")):
        for label, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                _image(1000 * offset + 100 * label + i).save(root / split / cls / f"{i}.png")
    return root


def _file_names(split: datasets.Dataset) -> list[str]:
    images = split.cast_column("image", datasets.Image(decode=False))["image"]
    return [str(Path(image["path"]).relative_to(Path(image["path"]).parents[2])) for image in images]


def test_resplit_draws_stratified_splits_of_the_shipped_sizes_whose_test_images_never_train(tmp_path, caplog):
    """data.resplit, what benchmarks/accuracy.py --splits uses: each split seed is a new stratified draw of the
    pooled images, with the dataset's own split sizes, and its test images are in neither training nor
    validation (the split that picks the best checkpoint)."""
    folder = _fixed_split_folder(tmp_path / "photos", per_class=10)  # 20 train / 20 validation / 20 test
    shipped = load_image_data(DataArguments(dataset=str(folder)))
    pool = {name for split in shipped.splits.values() for name in _file_names(split)}
    caplog.set_level("WARNING")
    tests = []
    for seed in range(5):
        data = load_image_data(DataArguments(dataset=str(folder), resplit=True, split_seed=seed))
        names = {name: _file_names(split) for name, split in data.splits.items()}
        assert {name: len(files) for name, files in names.items()} == {"train": 20, "validation": 20, "test": 20}
        assert data.class_counts("test") == data.class_counts("validation") == {"a": 10, "b": 10}
        assert not set(names["test"]) & (set(names["train"]) | set(names["validation"]))
        assert not set(names["validation"]) & set(names["train"])
        assert set(names["train"]) | set(names["validation"]) | set(names["test"]) == pool
        tests.append(frozenset(names["test"]))
    assert len(set(tests)) == 5  # five different test splits, each mixing the shipped splits' images
    assert all({name.split("/")[0] for name in test} == {"train", "validation", "test"} for test in tests)
    assert "not used" not in caplog.text  # split_seed is used here
    again = load_image_data(DataArguments(dataset=str(folder), resplit=True, split_seed=3))
    assert frozenset(_file_names(again.splits["test"])) == tests[3]


def test_copies_across_splits_leave_the_evaluation_side_and_are_reported(tmp_path, caplog):
    folder = _fixed_split_folder(tmp_path / "photos")
    train = folder / "train"
    (folder / "test" / "a" / "0.png").write_bytes((train / "a" / "3.png").read_bytes())  # leaked from train
    (folder / "test" / "b" / "copy.png").write_bytes((train / "b" / "1.png").read_bytes())
    (folder / "validation" / "a" / "5.png").write_bytes((train / "a" / "5.png").read_bytes())
    (folder / "test" / "b" / "val.png").write_bytes((folder / "validation" / "b" / "2.png").read_bytes())
    (train / "a" / "again.png").write_bytes((train / "a" / "0.png").read_bytes())  # a copy inside train
    caplog.set_level("INFO", logger="hf_cnn_ft")

    data = load_image_data(DataArguments(dataset=str(folder)))
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 13, "validation": 11, "test": 11}
    assert data.duplicates["across"] == {"validation": 1, "test": 3} and data.duplicates["within"] == {"train": 1}
    test_paths = {
        Path(p["path"]).name for p in data.splits["test"].cast_column("image", datasets.Image(decode=False))["image"]
    }
    assert not {"copy.png", "val.png"} & test_paths  # the added copies are gone, the original test images stay
    loud = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "byte-identical" in r.getMessage()]
    assert len(loud) == 2 and "3 test images" in loud[1] and "removed from test" in loud[1]
    assert f"{train / 'a' / '3.png'}" in " ".join(loud) or f"{train / 'b' / '1.png'}" in " ".join(loud)

    kept = load_image_data(DataArguments(dataset=str(folder), cross_split_duplicates="keep"))
    assert {name: len(split) for name, split in kept.splits.items()} == {"train": 13, "validation": 12, "test": 14}
    assert kept.duplicates["across"] == {"validation": 1, "test": 3}


def test_a_run_over_leaked_test_images_says_so_in_metrics_and_card(tmp_path):
    from conftest import TINY_SETTINGS, overrides

    from hf_cnn_ft.cli.main import main

    folder = _fixed_split_folder(tmp_path / "photos", per_class=8)
    (folder / "test" / "a" / "0.png").write_bytes((folder / "train" / "a" / "3.png").read_bytes())
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "num_train_epochs": 1, "dataset": folder, "output_dir": out, "top_losses": 0}
    assert main(["train", *overrides(settings)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["duplicates"]["across"] == {"test": 1} and summary["split_sizes"]["test"] == 15
    assert summary["test"]["num_samples"] == 15
    card = (out / "README.md").read_text()
    assert "Images byte-identical to an image of an earlier split: 1 test; removed from those splits." in card
