"""data.streaming: the training images read as a stream, split over processes, shuffled, resumable."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, accelerate_launch, cli_env, overrides
from PIL import Image
from safetensors.torch import load_file

from hf_cnn_ft.config.checkpoints import is_complete_checkpoint
from hf_cnn_ft.config.recipe import build_recipe
from hf_cnn_ft.data.streaming import StreamingImages
from hf_cnn_ft.errors import UserError


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), color, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def numbered_images(count: int, broken: tuple[int, ...] = ()) -> datasets.Dataset:
    """Image i is a solid colour that spells i, so a test can tell which images a stream yielded."""
    images = [
        {"bytes": b"not a png" if i in broken else _png((i % 256, i // 256, 7)), "path": None} for i in range(count)
    ]
    return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(count)]}, features=FEATURES)


FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["even", "odd"])})


def _numbered_rows(parts: list[int], count: int, of: int):
    for part in parts:
        for i in range(part, count, of):
            yield {"image": {"bytes": _png((i % 256, i // 256, 7)), "path": None}, "label": i % 2}


def numbered_stream(count: int, shards: int = 8) -> datasets.IterableDataset:
    """The same images as a stream generated in `shards` shards, never held as a table."""
    return datasets.IterableDataset.from_generator(
        _numbered_rows, features=FEATURES, gen_kwargs={"parts": list(range(shards)), "count": count, "of": shards}
    )


def number(image: Image.Image) -> torch.Tensor:
    red, green, _ = image.getpixel((0, 0))
    return torch.tensor(red + 256 * green)


def one_pass(stream: StreamingImages, pass_index: int = 0) -> list[int]:
    return [int(row["pixel_values"]) for row in stream.rows(pass_index)]


@pytest.mark.parametrize("source", ["table", "stream"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_processes_read_each_image_once_per_pass(world_size, source):
    # 101: a count no process count divides; the stream's 8 shards do not divide among 3 processes either
    table = numbered_images(101) if source == "table" else numbered_stream(101)
    passes = [
        [one_pass(StreamingImages(table, number, 0, 16, rank, world_size), p) for rank in range(world_size)]
        for p in (0, 1)
    ]
    for ranks in passes:
        seen = [image for rank in ranks for image in rank]
        assert sorted(seen) == list(range(101))  # every image, once, across the processes
    assert passes[0] != passes[1]  # each pass shuffled anew
    assert one_pass(StreamingImages(table, number, 0, 16)) == one_pass(StreamingImages(table, number, 0, 16))


def test_loader_workers_share_a_process_stream_without_repeats():
    table = numbered_images(64)
    stream = StreamingImages(table, number, 0, 8, workers=2)
    loader = torch.utils.data.DataLoader(stream, batch_size=8, num_workers=2)
    batches = iter(loader)
    first_pass = [int(i) for _ in range(8) for i in next(batches)["pixel_values"]]  # 64 images = one pass
    assert sorted(first_pass) == list(range(64))


def test_an_unreadable_image_is_skipped_and_reported_when_reached(caplog):
    stream = StreamingImages(numbered_images(20, broken=(5,)), number, 0, 4)
    with caplog.at_level(logging.WARNING):
        seen = one_pass(stream)
    assert sorted(seen) == [i for i in range(20) if i != 5]
    assert sum("skipping unreadable image" in r.getMessage() for r in caplog.records) == 1


def test_a_stream_is_counted_in_steps_and_has_no_cached_features(tmp_path):
    base = {"dataset": str(tmp_path), "output_dir": str(tmp_path / "out"), "streaming": True}
    with pytest.raises(UserError, match="set training.max_steps"):
        build_recipe({**base, "strategy": "full"})
    with pytest.raises(UserError, match="strategy two_phase fits the head on cached features"):
        build_recipe({**base, "max_steps": 100})
    with pytest.raises(UserError, match="balanced sampler"):
        build_recipe({**base, "max_steps": 100, "strategy": "full", "sampler": "balanced"})
    with pytest.raises(UserError, match="bn_adapt reads the whole training split"):
        build_recipe({**base, "max_steps": 100, "strategy": "full", "bn_adapt": True})

    training = build_recipe({**base, "max_steps": 100, "strategy": "full"}).training
    assert str(training.eval_strategy.value) == str(training.save_strategy.value) == "steps"
    assert training.eval_steps == training.save_steps == 10  # every tenth of the run
    kept = build_recipe({**base, "max_steps": 100, "strategy": "full", "eval_steps": 25}).training
    assert kept.eval_steps == kept.save_steps == 25 and kept.logging_steps == 10


def _streaming_settings(shapes_dir, out, steps: int) -> dict:
    return {
        **TINY_SETTINGS,
        "dataset": shapes_dir,
        "output_dir": out,
        "strategy": "full",
        "streaming": True,
        "shuffle_buffer": 32,
        "max_steps": steps,
    }


@pytest.mark.slow
def test_a_stream_trains_like_the_table(tmp_path, shapes_dir):
    from hf_cnn_ft.cli.main import main

    table_out, stream_out = tmp_path / "table", tmp_path / "stream"
    settings = {**TINY_SETTINGS, "dataset": shapes_dir, "strategy": "full"}
    assert main(["train", *overrides({**settings, "output_dir": table_out})]) == 0
    table = json.loads((table_out / "metrics.json").read_text())
    steps = table["epochs_trained"] * (table["split_sizes"]["train"] // TINY_SETTINGS["per_device_train_batch_size"])
    assert main(["train", *overrides(_streaming_settings(shapes_dir, stream_out, steps))]) == 0
    stream = json.loads((stream_out / "metrics.json").read_text())
    assert stream["split_sizes"] == table["split_sizes"]  # the same images, exactly, in every split
    assert stream["test"]["accuracy"] > 0.7 and abs(stream["test"]["accuracy"] - table["test"]["accuracy"]) < 0.2


@pytest.mark.slow
def test_a_killed_stream_resumes_where_it_stopped(tmp_path, shapes_dir):
    # Without random augmentation a run is a function of the images it reads, in their order: a resumed run
    # that repeated or skipped any would end with other weights than the run never stopped.
    fixed = {"hflip": 0.0, "crop_scale": "[1.0, 1.0]", "save_total_limit": 5, "early_stopping_patience": "null"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    command = [sys.executable, "-m", "hf_cnn_ft", "train"]
    for out in (whole, killed):
        settings = {**_streaming_settings(shapes_dir, out, 60), **fixed, "save_steps": 6, "eval_steps": 6}
        started = subprocess.Popen(
            [*command, *overrides(settings)], env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if out == killed:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not any(is_complete_checkpoint(p) for p in out.glob("checkpoint-*")):
                time.sleep(0.05)
            assert started.poll() is None, "the run ended before it could be interrupted"
            started.send_signal(signal.SIGKILL)
            started.wait(timeout=30)
            assert not (out / "metrics.json").exists()
            resumed = subprocess.run(
                [*command, *overrides(settings), "--resume"], env=cli_env(), capture_output=True, text=True
            )
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            assert "resuming from" in resumed.stderr
        else:
            assert started.wait(timeout=600) == 0
    expected, got = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(expected[name], got[name]) for name in expected), "the resumed run read other images"


@pytest.mark.slow
def test_two_processes_train_on_a_stream(tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {**_streaming_settings(shapes_dir, out, 24), "num_train_epochs": 1}
    result = subprocess.run(
        accelerate_launch(2, "train", *overrides(settings)), capture_output=True, text=True, env=cli_env(), timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2
    state = json.loads(
        max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        .joinpath("trainer_state.json")
        .read_text()
    )
    assert state["global_step"] == 24
