"""Sources that are streams themselves (data.streaming): folders of WebDataset tar or Parquet shards, and a Hub
dataset, read shard by shard for training, their evaluation splits read once into tables."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import pytest
import torch
from conftest import TINY_SETTINGS, cli_env, overrides
from PIL import Image

from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.streaming import StreamingImages
from hf_cnn_ft.errors import UserError


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def shapes_splits(shapes_dir: Path) -> datasets.DatasetDict:
    """The shapes images in fixed train / validation / test splits (every fifth image to each evaluation
    split), embedded as PNG: a WebDataset shard holds one image type."""
    shapes = datasets.load_dataset("imagefolder", data_dir=str(shapes_dir), split="train")
    shapes = shapes.map(lambda row: {"image": {"bytes": png(row["image"]), "path": None}})
    position = [i % 5 for i in range(len(shapes))]
    pick = {"train": (0, 1, 2), "validation": (3,), "test": (4,)}
    return datasets.DatasetDict(
        {name: shapes.select([i for i, p in enumerate(position) if p in kept]) for name, kept in pick.items()}
    )


def write_tar_shards(folder: Path, name: str, split: datasets.Dataset, shards: int) -> list[Path]:
    """WebDataset-style shards: `<key>.png` and `<key>.cls` per image, as `name-00000.tar`..."""
    folder.mkdir(parents=True, exist_ok=True)
    split, written = split.cast_column("image", datasets.Image(decode=False)), []
    for shard in range(shards):
        path = folder / f"{name}-{shard:05d}.tar"
        with tarfile.open(path, "w") as archive:
            for i in range(shard, len(split), shards):
                row = split[i]
                image, label = row["image"]["bytes"], b"%d" % row["label"]
                for member, payload in ((f"{name}{i:05d}.png", image), (f"{name}{i:05d}.cls", label)):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
        written.append(path)
    return written


def write_parquet_shards(folder: Path, name: str, split: datasets.Dataset, shards: int) -> None:
    """Parquet shards whose labels are plain strings (no declared class names)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = split.features["label"].names
    plain = split.map(lambda row: {"category": names[row["label"]]}, remove_columns=["label"])
    for shard in range(shards):
        plain.shard(shards, shard, contiguous=False).to_parquet(folder / f"{name}-{shard:05d}.parquet")


def digest(image: Image.Image) -> torch.Tensor:
    return torch.tensor(int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:7], "big"))


def pixel_digests(split: datasets.Dataset) -> list[int]:
    return [int(digest(image.convert("RGB"))) for image in split["image"]]


def one_pass(stream: StreamingImages) -> list[int]:
    return [int(row["pixel_values"]) for row in stream.rows(0)]


@pytest.fixture(scope="module")
def splits(shapes_dir) -> datasets.DatasetDict:
    return shapes_splits(shapes_dir)


@pytest.fixture
def tar_folder(tmp_path, splits) -> Path:
    folder = tmp_path / "shards"
    write_tar_shards(folder, "train", splits["train"], 4)
    write_tar_shards(folder, "validation", splits["validation"], 1)
    write_tar_shards(folder, "test", splits["test"], 1)
    return folder


def test_a_tar_shard_folder_streams_its_training_images_once_per_pass_across_processes(tar_folder, splits):
    data = load_image_data(DataArguments(dataset=str(tar_folder), streaming=True))
    assert isinstance(data.splits["train"], datasets.IterableDataset)
    assert data.split_sizes() == {"train": None, "validation": 24, "test": 24}  # evaluation splits exact
    assert data.label_names == ["0", "1", "2"]  # the .cls values, no names declared
    assert pixel_digests(data.splits["test"]) == pixel_digests(splits["test"])
    ranks = [one_pass(StreamingImages(data.splits["train"], digest, 0, 8, rank, 2)) for rank in range(2)]
    seen = ranks[0] + ranks[1]
    assert sorted(seen) == sorted(pixel_digests(splits["train"]))  # every training image once across the two
    assert data.typical_short_side() == 40
    again = load_image_data(DataArguments(dataset=str(tar_folder), streaming=True))
    assert again.splits["test"].cache_files == data.splits["test"].cache_files  # read once, then reused


def test_loader_workers_read_a_shard_folder_once_per_pass_between_them(tar_folder, splits):
    data = load_image_data(DataArguments(dataset=str(tar_folder), streaming=True))
    loader = torch.utils.data.DataLoader(
        StreamingImages(data.splits["train"], digest, 0, 8, workers=2), batch_size=6, num_workers=2
    )
    batches = iter(loader)
    first_pass = [int(i) for _ in range(12) for i in next(batches)["pixel_values"]]  # 2 workers x 2 shards x 18
    assert sorted(first_pass) == sorted(pixel_digests(splits["train"]))


def test_parquet_shards_name_their_classes_by_the_evaluation_splits(tmp_path, splits, caplog):
    folder = tmp_path / "parquet"
    write_parquet_shards(folder, "train", splits["train"], 3)
    write_parquet_shards(folder, "validation", splits["validation"], 1)
    stray = splits["train"].select([0]).map(lambda row: {"label": 0})  # relabelled below as a class nobody has
    stray.map(lambda row: {"category": "unseen"}, remove_columns=["label"]).to_parquet(folder / "train-00009.parquet")
    caplog.set_level(logging.WARNING)
    data = load_image_data(DataArguments(dataset=str(folder), streaming=True))
    assert data.label_names == sorted(splits["train"].features["label"].names)
    assert "declares no class names" in caplog.text
    rows = list(StreamingImages(data.splits["train"], digest, 0, 8).rows(0))
    assert len(rows) == len(splits["train"])  # the image labelled "unseen" is left out, the rest all read
    names = splits["train"].features["label"].names
    expected = sorted(data.label_names.index(names[label]) for label in splits["train"]["label"])
    assert sorted(row["labels"] for row in rows) == expected
    assert sum(data.class_counts("train").values()) == len(splits["train"])


def test_a_shard_that_breaks_off_midway_is_skipped_and_reported(tar_folder, splits, caplog):
    shards = sorted(tar_folder.glob("train-*.tar"))
    whole = shards[1].read_bytes()
    shards[1].write_bytes(whole[: len(whole) // 2 + 100])  # cut inside a member
    shards[2].write_bytes(b"these bytes were never a tar file" * 40)
    caplog.set_level(logging.WARNING)
    data = load_image_data(DataArguments(dataset=str(tar_folder), streaming=True))
    seen = one_pass(StreamingImages(data.splits["train"], digest, 0, 8))
    train = pixel_digests(splits["train"])
    intact = [train[i] for i in range(len(train)) if i % 4 in (0, 3)]
    assert set(intact) <= set(seen) < set(train)  # the intact shards whole, the cut one in part, nothing fatal
    warnings = [r.getMessage() for r in caplog.records if "skipping the rest of" in r.getMessage()]
    assert len(warnings) == 2 and str(shards[1]) in " ".join(warnings) and str(shards[2]) in " ".join(warnings)


def test_a_stream_source_needs_its_own_validation_split(tmp_path, splits):
    write_tar_shards(tmp_path / "only-train", "train", splits["train"], 2)
    with pytest.raises(UserError, match="has no validation split, and a stream cannot be carved"):
        load_image_data(DataArguments(dataset=str(tmp_path / "only-train"), streaming=True))


def test_a_hub_dataset_streams_from_the_hub(hub, splits):
    repo_id = hub.repo_id("streamed-shapes")
    datasets.DatasetDict({"train": splits["train"], "validation": splits["validation"]}).push_to_hub(repo_id)
    data = load_image_data(DataArguments(dataset=repo_id, streaming=True))
    assert isinstance(data.splits["train"], datasets.IterableDataset)
    assert data.label_names == splits["train"].features["label"].names  # declared by the pushed ClassLabel
    assert data.split_sizes()["validation"] == len(splits["validation"])
    assert sorted(one_pass(StreamingImages(data.splits["train"], digest, 0, 8))) == sorted(
        pixel_digests(splits["train"])
    )


@pytest.mark.slow
def test_an_unreachable_stream_source_is_one_line(tmp_path):
    env = {**cli_env(), "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port
    settings = {**TINY_SETTINGS, "dataset": "someone/catalogue", "output_dir": tmp_path / "out"}
    command = [sys.executable, "-m", "hf_cnn_ft", "train", *overrides(settings)]
    streaming = ["--streaming", "true", "--strategy", "full", "--max_steps", "10"]
    result = subprocess.run([*command, *streaming], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("hf-cnn-ft: error:")]
    assert len(errors) == 1 and "could not open 'someone/catalogue' as a stream" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_shard_stream_trains_like_the_same_images_as_a_table(tmp_path, splits, capsys):
    table, shards = tmp_path / "table", tmp_path / "shards"
    splits.save_to_disk(table)
    for name, count in (("train", 4), ("validation", 1), ("test", 1)):
        write_tar_shards(shards, name, splits[name], count)
    settings = {**TINY_SETTINGS, "strategy": "full", "max_steps": 40, "early_stopping_patience": "null"}
    from hf_cnn_ft.cli.main import main

    assert main(["train", *overrides({**settings, "dataset": table, "output_dir": tmp_path / "t"})]) == 0
    streamed = {**settings, "dataset": shards, "output_dir": tmp_path / "s", "streaming": True, "shuffle_buffer": 32}
    assert main(["train", *overrides(streamed)]) == 0
    mapped, stream = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("t", "s"))
    assert stream["split_sizes"] == {"train": None, "validation": 24, "test": 24}
    assert stream["test"]["accuracy"] > 0.7 and abs(stream["test"]["accuracy"] - mapped["test"]["accuracy"]) < 0.2
    assert main(["evaluate", str(tmp_path / "s"), "--split", "validation"]) == 0  # the run's own shard folder
    assert main(["evaluate", str(tmp_path / "s"), "--split", "train"]) == 2  # a stream is not evaluated whole
    assert "the train split of" in capsys.readouterr().err
