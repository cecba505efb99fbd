"""Gradual unfreezing: the trainable set per epoch, resume across an unfreeze, DDP, the LR restart."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SETTINGS, accelerate_launch, cli_env, overrides
from safetensors.torch import load_file

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.sections import FinetuneArguments, ModelArguments
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import stages
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.strategies.unfreezing import build_plan, fingerprint, restarting_schedule

SCHEDULE_RUN = {
    **TINY_SETTINGS,
    "strategy": "full",
    "bn": "frozen_in_frozen_stages",
    "num_train_epochs": 4,
    "save_total_limit": "null",
    "load_best_model_at_end": False,
    "early_stopping_patience": "null",
}


def _checkpoint_weights(out: Path) -> list[dict[str, torch.Tensor]]:
    found = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [load_file(str(p / "model.safetensors")) for p in found]


def _stage_of(names: dict[str, list[str]]) -> dict[str, str]:
    # Trainer checkpoints keep transformers' names (timm_model. prefix), as `stages` does.
    return {param: stage for stage, params in names.items() for param in params}


@pytest.mark.slow
def test_one_stage_per_epoch_trains_exactly_the_scheduled_stages(tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {**SCHEDULE_RUN, "dataset": shapes_dir, "output_dir": out, "unfreeze": "one_per_epochs"}
    assert main(["train", *overrides(settings)]) == 0
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), ["a", "b", "c"])
    order = list(stages(model))  # stem ... head
    stage_of = _stage_of(stages(model))
    history = json.loads((out / "metrics.json").read_text())["unfreeze_history"]
    assert [entry["epoch"] for entry in history] == [0, 1, 2, 3]
    assert [entry["training"] for entry in history] == [order[-k - 2 :] for k in range(4)]

    weights = _checkpoint_weights(out)  # after epochs 1, 2, 3, 4
    assert len(weights) == 4
    for epoch in (1, 2, 3):  # what changed during epoch `epoch` (0-based) is what was scheduled to train
        before, after = weights[epoch - 1], weights[epoch]
        changed_stages = {stage_of[k] for k in after if k in stage_of and not torch.equal(before[k], after[k])}
        assert changed_stages == set(order[-epoch - 2 :]), epoch
        # Frozen stages: parameters AND BatchNorm buffers bit-identical.
        frozen_prefixes = [k.rsplit(".", 1)[0] for k, stage in stage_of.items() if stage not in order[-epoch - 2 :]]
        for key in after:
            if key.endswith(("running_mean", "running_var")) and key.rsplit(".", 1)[0] in frozen_prefixes:
                assert torch.equal(before[key], after[key]), key


@pytest.mark.parametrize("ema_decay", [None, 0.9])
@pytest.mark.slow
def test_resume_across_an_unfreeze_boundary_ends_with_the_same_weights(tmp_path, shapes_dir, ema_decay):
    settings = {**SCHEDULE_RUN, "dataset": shapes_dir, "unfreeze": "head_then_all", "unfreeze_epochs": 2}
    if ema_decay:  # the final model is then the weight average, which must resume too
        settings["ema_decay"] = ema_decay
    uninterrupted = tmp_path / "a"
    assert main(["train", *overrides({**settings, "output_dir": uninterrupted})]) == 0

    # The same run interrupted after its first epoch (the backbone still frozen), then resumed.
    interrupted = tmp_path / "b"
    interrupted.mkdir()
    first = min(uninterrupted.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.copytree(first, interrupted / first.name)
    assert main(["train", *overrides({**settings, "output_dir": interrupted}), "--resume"]) == 0

    a, b = load_file(str(uninterrupted / "model.safetensors")), load_file(str(interrupted / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((interrupted / "metrics.json").read_text())["unfreeze_history"]
    assert history == json.loads((uninterrupted / "metrics.json").read_text())["unfreeze_history"]
    assert [entry["epoch"] for entry in history] == [0, 2]  # frozen from the start (resumed in epoch 1), unfrozen at 2


@pytest.mark.slow
def test_resume_in_the_middle_of_an_epoch_records_the_uninterrupted_history(tmp_path, shapes_dir):
    settings = {**SCHEDULE_RUN, "dataset": shapes_dir, "unfreeze": "one_per_epochs"}
    settings.update({"save_strategy": "steps", "save_steps": 5})  # 6 steps an epoch: one lands at 1.67
    uninterrupted = tmp_path / "a"
    assert main(["train", *overrides({**settings, "output_dir": uninterrupted})]) == 0

    def epoch_of(checkpoint: Path) -> float:
        return json.loads((checkpoint / "trainer_state.json").read_text())["epoch"]

    # Killed part-way through epoch 1 (1.67 is still epoch 1, not the next stage's epoch 2), then resumed.
    middle = [p for p in uninterrupted.glob("checkpoint-*") if 1.5 <= epoch_of(p) < 2]
    assert middle, "no checkpoint in the second half of epoch 1"
    interrupted = tmp_path / "b"
    interrupted.mkdir()
    shutil.copytree(middle[0], interrupted / middle[0].name)
    assert main(["train", *overrides({**settings, "output_dir": interrupted}), "--resume"]) == 0

    expected = json.loads((uninterrupted / "metrics.json").read_text())["unfreeze_history"]
    assert [entry["epoch"] for entry in expected] == [0, 1, 2, 3]
    assert json.loads((interrupted / "metrics.json").read_text())["unfreeze_history"] == expected


@pytest.mark.slow
def test_two_process_gradual_run_keeps_every_rank_identical(tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {**SCHEDULE_RUN, "strategy": "gradual", "head_epochs": 5, "dataset": shapes_dir, "output_dir": out}
    result = subprocess.run(
        accelerate_launch(2, "train", *overrides(settings)), capture_output=True, text=True, env=cli_env(), timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and len(metrics["unfreeze_history"]) == 4  # stages did unfreeze under DDP
    fingerprints = metrics["rank_weight_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]


def test_fingerprint_sees_a_single_changed_weight():
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), ["a", "b"])
    before = fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert fingerprint(model) != before


def test_gradual_preset_is_resolved_into_the_saved_recipe(tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "strategy": "gradual", "num_train_epochs": 2, "dataset": shapes_dir, "output_dir": out}
    assert main(["train", *overrides(settings), "--bn_adapt", "true"]) == 0
    finetune = yaml.safe_load((out / "recipe.yaml").read_text())["finetune"]
    assert finetune["unfreeze"] == "one_per_epochs" and finetune["lr_decay"] == 0.7
    assert "Strategy `gradual`" in (out / "README.md").read_text()


def test_learning_rate_restarts_at_each_unfreeze_and_keeps_stage_ratios():
    head, stem = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [head], "lr": 1.0}, {"params": [stem], "lr": 0.1}], lr=1.0)
    schedule = restarting_schedule(optimizer, 40, [20], lambda length: 2, "cosine")
    rates = []
    for _ in range(40):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    head_rates = [r[0] for r in rates]
    assert head_rates[19] < 0.05 and head_rates[20] < head_rates[21] < head_rates[22]  # decayed, then warm again
    assert max(head_rates[20:]) == pytest.approx(max(head_rates[:20]), rel=0.05)
    assert all(r[1] == pytest.approx(0.1 * r[0]) for r in rates)


def test_milestones_are_checked_against_the_model():
    # Unknown schedules and malformed milestones fail at load: tests/config/test_recipe_checks.py.
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), ["a", "b"])
    with pytest.raises(UserError, match="would freeze the head too"):
        build_plan(model, FinetuneArguments(unfreeze="milestones", unfreeze_milestones={2: 99}), 4)
    plan = build_plan(model, FinetuneArguments(unfreeze="milestones", freeze="backbone", unfreeze_milestones={2: 2}), 5)
    assert plan.changes == [2] and len(plan.frozen_at(1)) > len(plan.frozen_at(2)) == 2


def test_weight_average_is_what_validation_sees_and_what_is_saved(tmp_path, shapes_dir):
    from hf_cnn_ft.strategies.ema import EMA_FILE, WeightAverage

    out = tmp_path / "out"
    settings = {**SCHEDULE_RUN, "num_train_epochs": 3, "dataset": shapes_dir, "output_dir": out, "ema_decay": 0.9}
    assert main(["train", *overrides(settings)]) == 0
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    average = load_file(str(last / EMA_FILE))
    raw = load_file(str(last / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))  # timm layout: no timm_model. prefix
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], average[k])]
    assert moved  # the average is not the last weights...
    for key in moved:  # ...and it is what the final model holds
        assert torch.equal(
            final[key.removeprefix("timm_model.")], average[key].to(final[key.removeprefix("timm_model.")].dtype)
        )

    # The update rule, with timm's warm-up of the decay: 1st update 1/10, 2nd 2/11, ... capped at decay.
    average = WeightAverage(0.9)
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average.update(model)
    for value, decay in ((1.0, 1 / 10), (2.0, 2 / 11)):
        expected = average.average["weight"].item() * decay + value * (1 - decay)
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
        assert average.average["weight"].item() == pytest.approx(expected)


def test_the_epoch_of_a_trainer_state_is_the_one_it_lies_in():
    from hf_cnn_ft.strategies.unfreezing import _epoch_index

    assert [_epoch_index(e) for e in (None, 0.0, 1.67, 2.0, 2.5, 2.9999999)] == [0, 0, 1, 2, 2, 3]
