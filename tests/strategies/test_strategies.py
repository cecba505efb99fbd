"""Strategies come from the registry: a strategy written in a test runs end to end through `hf-cnn-ft train`."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.choices import STRATEGY_PRESETS, StrategyPreset
from hf_cnn_ft.models.anatomy import stages
from hf_cnn_ft.strategies.registry import STRATEGIES, Strategy, register_strategy

PACKAGE = Path(__file__).resolve().parents[2] / "hf_cnn_ft"


class EpochCounter(TrainerCallback):
    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs += 1


@dataclass(frozen=True)
class HeadOnlyFromScratch(Strategy):
    """A toy: no probe, and only the head trains in the Trainer phase."""

    seen: dict = field(default_factory=dict)
    counter: EpochCounter = field(default_factory=EpochCounter)

    def prepare(self, model, recipe):
        head = set(stages(model)["head"])
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in head)
        self.seen["stem"] = {n: p.detach().clone() for n, p in model.named_parameters() if n in stages(model)["stem"]}

    def callbacks(self, recipe):
        return [self.counter]

    def card_text(self, recipe, epochs_trained):
        return f"Strategy `{self.name}`: only the new head trained, for {epochs_trained:g} epochs."


@pytest.fixture
def toy():
    presets, strategies = dict(STRATEGY_PRESETS), dict(STRATEGIES)
    yield register_strategy(HeadOnlyFromScratch(StrategyPreset("toy_head_only", probes=False), "a toy"))
    for table, saved in ((STRATEGY_PRESETS, presets), (STRATEGIES, strategies)):
        table.clear()
        table.update(saved)


@pytest.mark.slow
def test_a_registered_strategy_runs_end_to_end(toy, tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "num_train_epochs": 2, "dataset": shapes_dir, "output_dir": out}
    assert main(["train", *overrides(settings), "--strategy", "toy_head_only"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["linear_probe"] is None  # its preset has no probe phase
    assert toy.counter.epochs == 2  # its callback joined the Trainer's
    saved = {f"timm_model.{k}": v for k, v in load_file(str(out / "model.safetensors")).items()}
    for name, before in toy.seen["stem"].items():  # its prepare() froze the backbone
        torch.testing.assert_close(saved[name], before)
    head = [saved[n] for n in saved if n.endswith(("fc.weight", "head.fc.weight"))]
    assert head and all(h.abs().sum() > 0 for h in head)  # ... and the zero-initialised head trained
    assert "only the new head trained, for 2 epochs" in (out / "README.md").read_text()
    assert "strategy: toy_head_only" in (out / "recipe.yaml").read_text()


def test_an_unregistered_strategy_fails_at_load(capsys, tmp_path):
    assert main(["train", "--dataset", str(tmp_path), "--strategy", "toy_head_only"]) == 2
    assert "'toy_head_only' is not one of full, linear_probe, two_phase, gradual" in capsys.readouterr().err


def test_nothing_outside_the_registry_branches_on_a_strategy_name():
    names = {"full", "linear_probe", "two_phase", "gradual"}
    allowed = {PACKAGE / "strategies" / "registry.py", PACKAGE / "config" / "sections.py"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                literals = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if names & {v for v in literals if isinstance(v, str)}:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, f"comparisons with strategy names: {found}"
