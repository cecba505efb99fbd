"""Two machines with `accelerate launch --num_machines 2`, simulated as two launchers on this one (gloo on
the CPU), with the shipped config file: the same final weights as one launcher running both processes."""

import json
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, TINY_SETTINGS, accelerate_launch, cli_env, overrides
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TWO_MACHINES = REPO_ROOT / "recipes" / "accelerate" / "two-machines.yaml"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _machine(rank: int, port: int, cli_args: list[str]) -> list[str]:
    """One machine's launcher: the shipped config, with this machine's rank and the address of machine 0."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(TWO_MACHINES),
        "--num_processes", "2",  # one per machine: the config counts every process of every machine
        "--machine_rank", str(rank),
        "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(port),
        "--mixed_precision", "no",
        "-m", "hf_cnn_ft", *cli_args,
    ]  # fmt: skip


def _own_cache(env: dict[str, str], home) -> dict[str, str]:
    """Each machine has its own disk: its own datasets cache, so each builds its own decode-once cache."""
    return {**env, "HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets")}


def test_two_machines_train_to_the_weights_of_one_machine_with_two_processes(tmp_path, shapes_dir):
    settings = {**TINY_SETTINGS, "num_train_epochs": 2, "dataset": shapes_dir, "seed": 7}
    one = tmp_path / "one-machine"
    single = subprocess.run(
        accelerate_launch(2, "train", *overrides({**settings, "output_dir": one})),
        capture_output=True, text=True, env=cli_env(), timeout=900,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    two = tmp_path / "two-machines"
    port = _free_port()
    cli_args = ["train", *overrides({**settings, "output_dir": two})]
    launchers = [
        subprocess.Popen(
            _machine(rank, port, cli_args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_own_cache(cli_env(), tmp_path / f"machine-{rank}"),
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [launcher.communicate(timeout=900) for launcher in launchers]
    for launcher, (_, stderr) in zip(launchers, outputs):
        assert launcher.returncode == 0, stderr[-3000:]

    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert json.loads((one / "metrics.json").read_text())["processes"] == 2
    assert outputs[0][0].count("test results") == 1 and "test results" not in outputs[1][0]  # machine 0 reports
    for rank in (0, 1):  # each machine decoded the images into its own cache
        assert any((tmp_path / f"machine-{rank}" / "datasets" / "hf-cnn-ft-decoded").iterdir())

    expected, got = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected), "the two setups trained differently"
