"""Decode once: the Arrow cache of resized images, its invalidation, and unchanged evaluation pixels."""

from __future__ import annotations

import shutil

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import IMAGE_COLUMN
from hf_cnn_ft.data.decode import decode_once
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.extras.synthetic import make_shapes_folder

CONFIG = DataConfig(input_size=24, crop_pct=0.875, interpolation="bicubic")


@pytest.fixture
def photos(tmp_path):
    """Wide images, larger than the input size, so resizing really happens."""
    return make_shapes_folder(tmp_path / "photos", per_class=10, size=60)


def _paths(split) -> list[str]:
    return [item["path"] for item in split.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))[IMAGE_COLUMN]]


def _load(folder):
    return load_image_data(DataArguments(dataset=str(folder), validation_fraction=0.2, test_fraction=0.2))


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_evaluation_sees_the_same_pixels_with_and_without_the_cache(photos, tmp_path, crop_mode):
    config = DataConfig(**{**CONFIG.__dict__, "crop_mode": crop_mode})
    data = _load(photos)
    cached = decode_once(data, config, tmp_path / "cache")
    transform = eval_transform(config)
    for split in ("validation", "test"):
        for original, stored in zip(data.splits[split][IMAGE_COLUMN], cached.splits[split][IMAGE_COLUMN]):
            assert torch.equal(transform(original.convert("RGB")), transform(stored))
    # Training images keep their aspect ratio; the shorter edge comes down to the evaluation size.
    train = cached.splits["train"][IMAGE_COLUMN]
    assert all(min(image.size) == config.resize_size for image in train)
    assert cached.splits["train"]["label"] == data.splits["train"]["label"]


def test_cache_is_reused_and_a_changed_image_invalidates_it(photos, tmp_path):
    root = tmp_path / "cache"
    decode_once(_load(photos), CONFIG, root)
    first = set(root.glob("*.arrow"))
    assert len(first) == 3  # one file per split
    decode_once(_load(photos), CONFIG, root)
    assert set(root.glob("*.arrow")) == first  # same source, same size: read back, nothing rebuilt

    # Overwrite one image with different content: the split holding it gets a new cache.
    victim = sorted(photos.rglob("*.png"))[0]
    Image.fromarray(np.full((60, 60, 3), 255, dtype=np.uint8)).save(victim)
    data = _load(photos)
    rebuilt = decode_once(data, CONFIG, root)
    new_files = set(root.glob("*.arrow")) - first
    assert new_files  # (datasets fingerprints a folder as a whole: every split may be rebuilt)
    found = [
        (name, i) for name in data.splits for i, path in enumerate(_paths(data.splits[name])) if path == str(victim)
    ]
    assert len(found) == 1
    name, index = found[0]
    assert np.asarray(rebuilt.splits[name][index][IMAGE_COLUMN]).min() == 255  # the new, white image

    # Another input size is another cache, too.
    decode_once(data, DataConfig(**{**CONFIG.__dict__, "input_size": 32}), root)
    assert len(set(root.glob("*.arrow"))) > len(first | new_files)
    shutil.rmtree(root)


def test_images_not_larger_than_needed_keep_their_original_bytes(photos, tmp_path):
    big_input = DataConfig(input_size=224)  # resize size 256 > the 60 px photos: nothing to shrink
    data = _load(photos)
    cached = decode_once(data, big_input, tmp_path / "cache")
    for name in data.splits:
        stored = cached.splits[name].cast_column(IMAGE_COLUMN, datasets.Image(decode=False))[IMAGE_COLUMN]
        for path, item in zip(_paths(data.splits[name]), stored):
            assert item["bytes"] == open(path, "rb").read()


def test_each_image_is_decoded_once_before_training(tmp_path, monkeypatch):
    folder = make_shapes_folder(tmp_path / "shapes", per_class=6, size=40)
    (folder / "red_disc" / "broken.png").write_bytes(b"not a png")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    opened = []
    real_open = Image.open

    def counting_open(source, *args, **kwargs):
        opened.append(source)
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    args = DataArguments(dataset=str(folder), validation_fraction=0.2, test_fraction=0.2)
    data = decode_once(load_image_data(args, check_images=False), CONFIG, root=tmp_path / "cache")
    assert len(opened) == len(files)  # the cache build is the only decoding pass, the broken file included
    assert [(s.path.endswith("broken.png"), s.reason.split(":")[0]) for s in data.skipped] == [
        (True, "UnidentifiedImageError")
    ]
    assert sum(len(split) for split in data.splits.values()) == len(files) - 1

    opened.clear()
    again = decode_once(load_image_data(args, check_images=False), CONFIG, root=tmp_path / "cache")
    assert opened == [] and len(again.skipped) == 1  # a cache hit decodes nothing, and still knows the bad file


@pytest.mark.slow
def test_a_skipped_image_is_reported_once_by_a_run(tmp_path, caplog):
    from conftest import TINY_SETTINGS, overrides

    from hf_cnn_ft.cli.main import main

    folder = make_shapes_folder(tmp_path / "shapes", per_class=12, size=40)
    (folder / "green_square" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    settings = {**TINY_SETTINGS, "num_train_epochs": 1, "dataset": folder, "output_dir": tmp_path / "out"}
    assert main(["train", *overrides(settings)]) == 0
    warnings = [r for r in caplog.records if "broken.jpg" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    listed = (tmp_path / "out" / "skipped_images.tsv").read_text().splitlines()
    assert len(listed) == 2 and listed[1].split("\t")[1].endswith("broken.jpg")
