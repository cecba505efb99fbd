"""Every choice-valued or cross-field-constrained recipe key fails at load, before data or a model is touched."""

from __future__ import annotations

import pytest

from hf_cnn_ft.cli.main import EXIT_USER_ERROR, main
from hf_cnn_ft.config.choices import STRATEGY_PRESETS
from hf_cnn_ft.config.recipe import build_recipe

# (overrides, the key the error names, the bad value it quotes, a piece of what it allows)
BAD_VALUES = [
    (["--strategy", "twophase"], "finetune.strategy", "twophase", "two_phase"),
    (["--freeze", "top"], "finetune.freeze", "top", "backbone"),
    (["--bn", "sometimes"], "finetune.bn", "sometimes", "frozen_in_frozen_stages"),
    (["--unfreeze", "later"], "finetune.unfreeze", "later", "one_per_epochs"),
    (["--unfreeze", "milestones"], "finetune.unfreeze_milestones", "milestones", "{3: 2, 6: none}"),
    (["--unfreeze", "milestones", "--unfreeze_milestones", "{x: 2}"], "finetune.unfreeze_milestones", "x", "epoch"),
    (["--unfreeze", "milestones", "--unfreeze_milestones", "{3: top}"], "finetune.freeze", "top", "backbone"),
    (["--unfreeze_epochs", "0"], "finetune.unfreeze_epochs", "0", ">= 1"),
    (["--sampler", "oversample"], "finetune.sampler", "oversample", "balanced"),
    (["--class_weights", "inverse"], "finetune.class_weights", "inverse", "auto, none or a mapping"),
    (["--head_epochs", "0"], "finetune.head_epochs", "0", ">= 1"),
    (["--feature_views", "0"], "finetune.feature_views", "0", ">= 1"),
    (["--probe_stages", "-1"], "finetune.probe_stages", "-1", ">= 0"),
    (["--l2sp_alpha", "-0.1"], "finetune.l2sp_alpha", "-0.1", ">= 0"),
    (["--backbone_lr_multiplier", "-1"], "finetune.backbone_lr_multiplier", "-1", ">= 0"),
    (["--lr_decay", "1.5"], "finetune.lr_decay", "1.5", "(0, 1]"),
    (["--ema_decay", "1.0"], "finetune.ema_decay", "1.0", "in (0, 1)"),
    (["--wise_alpha", "2"], "finetune.wise_alpha", "2", "auto or in [0, 1]"),
    (["--wise_alpha", "often"], "finetune.wise_alpha", "often", "auto"),
    (["--strategy", "full", "--wise_alpha", "0.5"], "finetune.wise_alpha", "full", "two_phase or gradual"),
    (["--auto_augment", "autoaugment"], "augment.auto_augment", "autoaugment", "trivialaugment"),
    (["--test_time_flips", "diagonal"], "augment.test_time_flips", "diagonal", "horizontal"),
    (["--crop_scale", "0.9,0.2"], "augment.crop_scale", "[0.9, 0.2]", "0 < low <= high <= 1"),
    (["--mix_prob", "1.5"], "augment.mix_prob", "1.5", "[0, 1]"),
    (["--crop_mode", "letterbox"], "model.crop_mode", "letterbox", "squash"),
    (["--global_pool", "mean"], "model.global_pool", "mean", "avgmax"),
    (["--cross_split_duplicates", "drop"], "data.cross_split_duplicates", "drop", "remove"),
    (["--validation_fraction", "1.2"], "data.validation_fraction", "1.2", "[0, 1)"),
    (["--test_fraction", "-0.1"], "data.test_fraction", "-0.1", "[0, 1)"),
    (["--peft_method", "ia3"], "peft.peft_method", "ia3", "loha"),
    (["--pruner", "hyperband"], "tune.pruner", "hyperband", "halving"),
    (["--trials", "0"], "tune.trials", "0", "at least 1"),
    (["--timeout", "0"], "tune.timeout", "0", "more than 0"),
    (["--cv_folds", "often"], "tune.cv_folds", "often", "auto"),
    (["--cv_folds", "0"], "tune.cv_folds", "0", "at least 1"),
    (["--unlabeled_method", "mixmatch"], "signal.unlabeled_method", "mixmatch", "flexmatch"),
    (["--precision", "fp8"], "training.precision", "fp8", "bf16"),
    (["--space", "{learning_rate: {log_uniform: [0, 0.1]}}"], "tune.space.learning_rate", "0", "low > 0"),
    (["--lora_rank", "0"], "peft.lora_rank", "0", ">= 1"),
    (["--peft_method", "lora", "--strategy", "gradual"], "finetune.strategy", "gradual", "two_phase"),
    (["--peft_method", "lora", "--unfreeze", "head_then_all"], "finetune.unfreeze", "peft", "frozen"),
    (["--peft_method", "lora", "--freeze", "2"], "finetune.freeze", "peft", "base weights"),
    (["--peft_method", "lora", "--lr_decay", "0.5"], "lr_decay", "peft", "full weights"),
    (["--peft_method", "lora", "--wise_alpha", "0.5"], "finetune.wise_alpha", "peft", "full weights"),
    (["--peft_method", "lora", "--pretrained", "false"], "model.pretrained", "false", "strategy full"),
    (["--push_strategy", "hourly"], "hub.push_strategy", "hourly", "every_save"),
    (["--rejection_score", "entropy"], "report.rejection_score", "entropy", "energy"),
    (["--rejection_rate", "0.9"], "report.rejection_rate", "0.9", "(0, 0.5]"),
    (["--metric_for_best_model", "auc"], "training.metric_for_best_model", "auc", "f1_macro"),
    (["--push_to_hub", "true"], "training.push_to_hub", "hub.repo_id", "hub.repo_id"),
    (["--remove_unused_columns", "true"], "training.remove_unused_columns", "false", "#17894"),
]


@pytest.fixture
def untouched(monkeypatch, tmp_path):
    """A dataset path that would fail if read, and spies on every loading and building function."""
    calls = []
    for target in (
        "hf_cnn_ft.data.loading.load_raw_dataset",
        "hf_cnn_ft.training.run_start.load_image_data",
        "hf_cnn_ft.training.prepare.build_model",
    ):
        monkeypatch.setattr(target, lambda *args, _target=target, **kwargs: calls.append(_target))
    return tmp_path / "no-such-folder", calls


@pytest.mark.parametrize(("bad", "key", "value", "allowed"), BAD_VALUES, ids=[" ".join(b[0]) for b in BAD_VALUES])
def test_a_bad_value_fails_at_load_with_one_line(bad, key, value, allowed, untouched, capsys, tmp_path):
    dataset, calls = untouched
    code = main(["train", "--dataset", str(dataset), "--output_dir", str(tmp_path / "out"), *bad])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    line = err.strip()
    key_name = key.rpartition(".")[2]
    assert key_name in line and value.lower() in line.lower() and allowed in line, line
    assert calls == [], f"touched before the check: {calls}"
    assert not (tmp_path / "out").exists()


def test_the_matrix_covers_every_choice_valued_key():
    """A new Literal-typed key or strategy must join BAD_VALUES: the check is only as good as this list."""
    import dataclasses
    import types
    import typing

    from transformers import TrainingArguments

    from hf_cnn_ft.config.sections import SECTIONS

    covered = {key.rpartition(".")[2] for _, key, _, _ in BAD_VALUES}
    choice_keys = set()
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}  # transformers checks its own
    for cls in SECTIONS.values():
        for name, hint in typing.get_type_hints(cls).items():
            if name in inherited:
                continue
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            members = typing.get_args(hint) if union else [hint]
            if any(typing.get_origin(m) is typing.Literal for m in members):
                choice_keys.add(name)
    assert choice_keys >= {"bn", "unfreeze", "sampler", "auto_augment", "crop_mode", "peft_method", "push_strategy"}
    assert choice_keys <= covered, f"not in BAD_VALUES: {choice_keys - covered}"


def test_the_strategy_fills_its_defaults_at_load():
    gradual = build_recipe({"strategy": "gradual"})
    assert (gradual.finetune.unfreeze, gradual.finetune.lr_decay) == ("one_per_epochs", 0.7)
    two_phase = build_recipe({"strategy": "two_phase"})
    assert (two_phase.finetune.unfreeze, two_phase.finetune.lr_decay) == ("none", 1.0)
    own = build_recipe({"strategy": "gradual", "unfreeze": "head_then_all", "lr_decay": 0.9})
    assert (own.finetune.unfreeze, own.finetune.lr_decay) == ("head_then_all", 0.9)
    assert set(STRATEGY_PRESETS) >= {"full", "linear_probe", "two_phase", "gradual"}
