"""Shared fixtures: a generated, learnable image folder and a tiny model trained on it once."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import HubServer  # noqa: E402

# Nothing in the suite may reach the real Hub: every Hub call, in this process and in the CLI
# subprocesses, goes to a Hub-compatible server on 127.0.0.1. These variables are read when
# huggingface_hub is first imported, so they are set before anything imports it.
HUB = HubServer().start()
os.environ["HF_ENDPOINT"] = HUB.endpoint
os.environ["HF_HUB_DISABLE_XET"] = "1"  # the Xet protocol is not something a loopback server offers
os.environ.pop("HF_TOKEN", None)
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_home_")  # no developer's login token reaches the tests
for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(variable, None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_cnn_ft.extras.synthetic import make_shapes_folder  # noqa: E402  (after the environment is set)

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_SETTINGS = {
    "model": "test_resnet",
    "pretrained": False,
    "image_size": 32,
    "num_train_epochs": 8,
    "learning_rate": 3e-3,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
    "precision": "fp32",  # auto times each precision: tests pin one, and test auto on its own (test_precision.py)
}


def overrides(settings: dict) -> list[str]:
    """Settings as command-line overrides (--key value)."""
    args: list[str] = []
    for key, value in settings.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


@pytest.fixture(autouse=True, scope="session")
def isolated_hf_home(tmp_path_factory):
    """A fresh HF cache per session, so tests never depend on what an earlier run left."""
    home = tmp_path_factory.mktemp("hf_home")
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_CACHE"] = str(home / "datasets")
    import datasets.config

    datasets.config.HF_DATASETS_CACHE = Path(home / "datasets")
    yield home


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    return make_shapes_folder(tmp_path_factory.mktemp("shapes"), per_class=40, size=40)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shapes_dir) -> Path:
    """One tiny end-to-end training run through the CLI, shared by the tests that inspect it."""
    from hf_cnn_ft.cli.main import main

    output_dir = tmp_path_factory.mktemp("run") / "out"
    code = main(["train", *overrides({**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": output_dir})])
    assert code == 0
    return output_dir


def cli_env() -> dict[str, str]:
    """Environment for subprocesses running the CLI from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable


def accelerate_launch(processes: int, *cli_args: str) -> list[str]:
    """`accelerate launch` of the CLI with several CPU processes.

    On a machine without GPUs, --multi_gpu runs torchrun and the processes form a gloo group on the
    CPU (`--cpu` alone would start one process: accelerate needs MPI for several CPU processes).
    """
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "hf_cnn_ft",
        *cli_args,
    ]


@dataclass
class HubUser:
    server: HubServer
    name: str
    token: str

    def repo_id(self, stem: str) -> str:
        return f"{self.name}/{stem}"


@pytest.fixture
def hub(monkeypatch) -> HubUser:
    """A fresh user on the loopback Hub, logged in through HF_TOKEN like a real user would be."""
    name = f"user-{uuid.uuid4().hex[:8]}"
    token = HUB.state.add_user(name)
    monkeypatch.setenv("HF_TOKEN", token)
    return HubUser(HUB, name, token)


@pytest.fixture
def copy_of(tmp_path):
    def copy(folder: Path) -> Path:
        target = tmp_path / folder.name
        shutil.copytree(folder, target)
        return target

    return copy


def pytest_terminal_summary(terminalreporter):
    """A Hub call the loopback server does not implement shows up here instead of vanishing in a 404."""
    if HUB.state.unhandled:
        terminalreporter.write_line(
            "loopback Hub: unimplemented requests: " + ", ".join(sorted(set(HUB.state.unhandled)))
        )
