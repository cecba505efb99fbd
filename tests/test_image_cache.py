"""Decode once: the Arrow cache of resized images, its invalidation, and unchanged evaluation pixels."""

from __future__ import annotations

import shutil

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import make_shapes_folder

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import IMAGE_COLUMN
from hf_cnn_ft.data.decode import decode_once
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import eval_transform

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
