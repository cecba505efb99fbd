"""Feeding the model at scale: loader settings chosen from the machine, and the passes over every image before
training (readable check, duplicate hashes, decode-once cache) split over processes."""

from __future__ import annotations

import logging

import datasets
import pytest

from hf_cnn_ft.config import training_defaults
from hf_cnn_ft.config.recipe import build_recipe
from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import IMAGE_COLUMN, preparation_workers
from hf_cnn_ft.data.decode import decode_once
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.extras.synthetic import make_shapes_folder
from hf_cnn_ft.training.machine import describe_input_pipeline


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine with `cores` cores, `processes` local training processes and maybe a GPU."""

    def pretend(cores: int, processes: int = 1, gpu: bool = False) -> None:
        monkeypatch.setattr(training_defaults.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
        monkeypatch.setattr(training_defaults, "_cuda_available", lambda: gpu)

    return pretend


@pytest.mark.parametrize(
    ("cores", "processes", "gpu", "expected"),
    [
        (2, 1, False, (0, False, None)),  # this machine: the model's threads need both cores
        (16, 1, False, (8, False, None)),
        (16, 2, True, (7, True, 4)),  # 8 cores per GPU process: one drives the GPU, seven feed it
        (64, 1, True, (8, True, 4)),
        (4, 4, True, (0, True, None)),  # one core per GPU: no worker to spare
    ],
)
def test_the_loader_plan_follows_the_cores_processes_and_device(machine, cores, processes, gpu, expected):
    machine(cores, processes, gpu)
    plan = training_defaults.loader_plan()
    assert (plan.workers, plan.pin_memory, plan.prefetch_factor) == expected
    assert f"{cores} cores" in plan.reason and ("CUDA" in plan.reason) == gpu


def test_the_chosen_loader_settings_and_their_reason_are_logged(machine, tmp_path):
    machine(16, 1, gpu=False)
    planned = build_recipe({"dataset": "x", "output_dir": str(tmp_path)}, "test").training
    assert planned.dataloader_num_workers == 8 and planned.dataloader_persistent_workers
    assert planned.dataloader_prefetch_factor is None  # on a CPU, torch's own
    line = describe_input_pipeline(planned)
    assert line.startswith("input pipeline: 8 loader workers per process, 2 batches prefetched") and "16 cores" in line

    chosen = build_recipe({"dataset": "x", "output_dir": str(tmp_path), "dataloader_num_workers": 3}, "test").training
    assert "3 loader workers" in describe_input_pipeline(chosen)
    assert describe_input_pipeline(chosen).endswith("as the recipe sets")


def test_preparation_runs_in_parallel_only_where_it_pays(machine):
    machine(4)
    assert preparation_workers(None, 500) is None  # a small split: starting processes costs more
    assert preparation_workers(None, 5000) == 4
    assert preparation_workers(3, 500) == 3  # asked for
    assert preparation_workers(8, 2) == 2 and preparation_workers(1, 10_000) is None


def _stored(data) -> dict[str, list]:
    return {
        name: split.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))[IMAGE_COLUMN]
        for name, split in data.splits.items()
    }


def test_parallel_preparation_gives_what_one_process_gives_and_is_reused(tmp_path, caplog):
    folder = make_shapes_folder(tmp_path / "shapes", per_class=12, size=40)
    (folder / "red_disc" / "broken.png").write_bytes(b"not a png")
    config = DataConfig(input_size=24, crop_pct=0.875, interpolation="bicubic")

    def prepare(workers: int | None, root):
        args = DataArguments(dataset=str(folder), preprocessing_num_workers=workers)
        with caplog.at_level(logging.WARNING):
            checked = load_image_data(args)  # the readable check and the hashes, in `workers` processes
        return checked, decode_once(load_image_data(args, check_images=False), config, root, workers)

    serial_checked, serial = prepare(None, tmp_path / "serial")
    parallel_checked, parallel = prepare(2, tmp_path / "parallel")
    assert [s.path for s in parallel_checked.skipped] == [s.path for s in serial_checked.skipped]
    assert [s.path.endswith("broken.png") for s in parallel.skipped] == [True]
    assert _stored(parallel) == _stored(serial)  # same images, same bytes, same order
    assert {name: split["label"] for name, split in parallel.splits.items()} == {
        name: split["label"] for name, split in serial.splits.items()
    }
    shards = sorted(p.name for p in (tmp_path / "parallel").glob("train-*.arrow"))
    assert len(shards) == 2 and all("_of_00002" in name for name in shards)  # one shard per process

    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "parallel").glob("*.arrow")}
    _, again = prepare(2, tmp_path / "parallel")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "parallel").glob("*.arrow")} == before  # read back
    assert _stored(again) == _stored(parallel) and len(again.skipped) == 1
