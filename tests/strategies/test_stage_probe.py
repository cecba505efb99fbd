"""The stage probe: the head and the last N stages trained on cached inputs of the stages before them."""

import json

import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification, set_seed

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.sections import ModelArguments
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import stages
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.strategies.probe import module_input
from hf_cnn_ft.strategies.stage_probe import check_entry, entry_module, logits_from_stage_inputs, trained_stage_names

LABELS = ["a", "b", "c"]


@pytest.mark.parametrize(
    "architecture, entry",
    [
        ("test_resnet", "timm_model.layer3"),
        ("test_efficientnet", "timm_model.blocks.3"),
        ("test_convnext", "timm_model.stages.3"),
        ("mobilenetv3_small_050", "timm_model.blocks.5"),
    ],
)
def test_logits_from_cached_stage_inputs_are_the_models_logits(architecture, entry):
    model, _ = build_model(ModelArguments(model=architecture, pretrained=False), LABELS)
    name, module = entry_module(model, trained_stage_names(model, 2)[0])
    assert name == entry
    pixels = torch.randn(3, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        rebuilt = logits_from_stage_inputs(model, module, module_input(model, module, pixels))
        torch.testing.assert_close(rebuilt, model(pixel_values=pixels).logits, rtol=0, atol=0)


def test_native_transformers_model_enters_at_its_stage(tmp_path):
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1])
    ResNetForImageClassification(config).save_pretrained(tmp_path / "r")
    model, _ = build_model(ModelArguments(model=str(tmp_path / "r")), LABELS)
    name, module = entry_module(model, trained_stage_names(model, 1)[0])
    assert name == "resnet.encoder.stages.2"
    check_entry(model, name, module, torch.randn(2, 3, 64, 64))


def test_an_entry_that_a_shortcut_bypasses_is_refused():
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    inside_a_residual_block = model.timm_model.layer3[0].conv2
    with pytest.raises(UserError, match=r"probe_stages.* layer3.0.conv2 .*use probe_stages 0"):
        check_entry(model, "layer3.0.conv2", inside_a_residual_block, torch.randn(2, 3, 64, 64))


def test_probe_stages_beyond_the_backbone_is_one_clear_line():
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    with pytest.raises(UserError, match=r"between 1 and 4 for this model \(its stages: stem, stage1"):
        trained_stage_names(model, 5)


def _stage_probe_run(tmp_path, shapes_dir, bn: str) -> tuple[dict, dict[str, torch.Tensor]]:
    out = tmp_path / bn
    settings = {
        **TINY_SETTINGS,
        "dataset": shapes_dir,
        "output_dir": out,
        "strategy": "linear_probe",
        "probe_stages": 1,
        "feature_views": 2,
        "head_epochs": 3,
        "head_learning_rate": 0.01,
        "backbone_lr_multiplier": 0.5,
        "bn": bn,
        "zero_init_head": True,
    }
    assert main(["train", *overrides(settings)]) == 0
    return json.loads((out / "metrics.json").read_text()), load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("bn", ["train", "frozen"])
def test_only_the_last_stage_and_the_head_change(tmp_path, shapes_dir, bn):
    metrics, trained = _stage_probe_run(tmp_path, shapes_dir, bn)
    assert metrics["linear_probe"]["epoch"] == 3 and metrics["epochs_trained"] == 0
    assert len(metrics["linear_probe_history"]) == 3 and "eval_accuracy" in metrics["linear_probe"]

    set_seed(42)  # the run's seed: the same random init
    reference, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    original = {k.removeprefix("timm_model."): v for k, v in reference.state_dict().items()}
    last_stage = {k.removeprefix("timm_model.").rsplit(".", 1)[0] for k in stages(reference)["stage4"]}
    changed = {key for key, value in trained.items() if not torch.equal(value, original[key])}
    statistics = {key for key in changed if key.endswith(("running_mean", "running_var", "num_batches_tracked"))}

    assert all(key.startswith(("layer4.", "fc.")) for key in changed), sorted(changed)
    assert {"layer4.0.conv1.weight", "fc.weight"} <= changed
    assert all(key.rsplit(".", 1)[0] in last_stage for key in statistics)
    if bn == "train":
        assert "layer4.0.bn1.running_mean" in statistics
    else:
        assert not statistics and "layer4.0.bn1.weight" not in changed


def test_card_names_the_trained_stages(tmp_path, shapes_dir):
    out = tmp_path / "card"
    settings = {
        **TINY_SETTINGS,
        "dataset": shapes_dir,
        "output_dir": out,
        "strategy": "two_phase",
        "probe_stages": 2,
        "head_epochs": 2,
        "num_train_epochs": 1,
    }
    assert main(["train", *overrides(settings)]) == 0
    card = (out / "README.md").read_text()
    assert "a probe of the new head and the last 2 stages (2 epochs on cached outputs" in card
    assert json.loads((out / "metrics.json").read_text())["epochs_trained"] == 1


def test_a_cache_larger_than_half_the_free_memory_is_refused_before_caching(tmp_path, shapes_dir, capsys, monkeypatch):
    monkeypatch.setattr("hf_cnn_ft.strategies.stage_probe.available_memory", lambda: 2**10)
    settings = {
        **TINY_SETTINGS,
        "dataset": shapes_dir,
        "output_dir": tmp_path / "o",
        "strategy": "linear_probe",
        "probe_stages": 1,
        "feature_views": 4,
    }
    assert main(["train", *overrides(settings)]) != 0
    error = capsys.readouterr().err
    assert (
        "caching what timm_model.layer4 receives takes" in error
        and "more than half the 1.0 KiB of free memory; lower feature_views" in error
    )
    assert not (tmp_path / "o" / "metrics.json").exists()
