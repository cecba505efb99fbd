"""peft adapters on CNNs: what trains, what is saved (BatchNorm included), load, merge, push."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from huggingface_hub import HfApi, ModelCard
from peft import PeftModel

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.sections import ModelArguments, PeftArguments
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.predict import predict_files
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.models.io import save_model
from hf_cnn_ft.share.run_dir import load_adapter_dir, load_run
from hf_cnn_ft.strategies.adapters import apply_adapter, batchnorm_names, parameter_counts, save_adapter

LABELS = ["a", "b", "c"]


def _base_dir(root: Path, architecture: str) -> Path:
    """A saved 'pretrained' base model: adapters only make sense on weights that can be rebuilt."""
    model, data_config = build_model(ModelArguments(model=architecture, pretrained=False, image_size=32), LABELS)
    torch.nn.init.normal_(model.timm_model.get_classifier().weight, std=0.1)
    directory = root / architecture
    save_model(model, data_config, directory)
    return directory


def _adapted(base: Path, method: str = "lora") -> PeftModel:
    model, _ = build_model(ModelArguments(model=str(base), zero_init_head=False), LABELS)
    return apply_adapter(model, PeftArguments(peft_method=method, lora_rank=4), train_batchnorm=True)


def _train_a_little(model: torch.nn.Module, steps: int = 5) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        pixels = torch.randn(8, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 3, (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return model.eval()(pixel_values=pixels).logits


@pytest.mark.parametrize(
    ("architecture", "method"), [("test_resnet", "lora"), ("test_efficientnet", "lora"), ("test_resnet", "loha")]
)
def test_only_adapter_head_and_batchnorm_train(tmp_path, architecture, method):
    plain, _ = build_model(ModelArguments(model=str(_base_dir(tmp_path, architecture))), LABELS)
    bn = {name for name in batchnorm_names(plain) if any(True for _ in plain.get_submodule(name).parameters())}
    head = "timm_model." + plain.timm_model.default_cfg.get("classifier", "fc")
    model = apply_adapter(plain, PeftArguments(peft_method=method, lora_rank=4), train_batchnorm=True)
    adapter_marker = "lora_" if method == "lora" else "hada_"
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(adapter_marker in name or ".modules_to_save." in name for name in trainable)
    saved_modules = {name.split(".modules_to_save.")[0] for name in trainable if ".modules_to_save." in name}
    assert {n.removeprefix("base_model.model.") for n in saved_modules} == bn | {head}
    assert any(adapter_marker in name for name in trainable)  # the convolutions did get adapters
    trained, total = parameter_counts(model)
    assert trained == sum(p.numel() for p in model.parameters() if p.requires_grad) and trained < total


def test_saved_adapter_predicts_exactly_as_before_saving_and_merges(tmp_path):
    base = _base_dir(tmp_path, "test_resnet")
    model = _adapted(base)
    _train_a_little(model)
    reference = _logits(model)

    # The BatchNorm statistics moved while training: an adapter without them would predict differently.
    fresh, _ = build_model(ModelArguments(model=str(base)), LABELS)
    trained_bn = dict(model.named_buffers())
    moved = [
        name
        for name, buffer in fresh.named_buffers()
        if name.endswith("running_mean")
        and not torch.equal(
            buffer,
            trained_bn[f"base_model.model.{name.replace('.running_mean', '')}.modules_to_save.default.running_mean"],
        )
    ]
    assert moved

    save_adapter(model, str(base), tmp_path / "adapter")
    restored = PeftModel.from_pretrained(build_model(ModelArguments(model=str(base)), LABELS)[0], tmp_path / "adapter")
    assert torch.equal(_logits(restored), reference)  # bit-identical
    merged = restored.merge_and_unload()
    torch.testing.assert_close(_logits(merged), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_lora_run_end_to_end_evaluate_merge_predict(tmp_path, shapes_dir, capsys):
    base = _base_dir(tmp_path, "test_resnet")
    out = tmp_path / "out"
    settings = {
        **TINY_SETTINGS,
        "model": base,
        "pretrained": True,
        "num_train_epochs": 2,
        "dataset": shapes_dir,
        "output_dir": out,
        "peft_method": "lora",
        "lora_rank": 4,
    }
    assert main(["train", *overrides(settings)]) == 0
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["peft"]["trainable_parameters"] < metrics["peft"]["total_parameters"]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and f"base model `{base}`" in card.text

    # evaluate and predict take the adapter directory as it is (base rebuilt from recipe.yaml)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["confusion_matrix"] == metrics["test"]["confusion_matrix"]

    assert main(["merge", str(out), str(tmp_path / "merged")]) == 0
    merged = tmp_path / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "metrics.json").is_file()
    assert ModelCard.load(merged / "README.md").data.library_name == "timm"
    images = sorted(shapes_dir.rglob("*.png"))[:5]
    from_adapter, from_merged = predict_files(out, images), predict_files(merged, images)
    assert [p.labels[0] for p in from_adapter] == [p.labels[0] for p in from_merged]
    for a, m in zip(from_adapter, from_merged):
        assert a.scores == pytest.approx(m.scores, abs=1e-4)
    assert main(["merge", str(out), str(merged)]) == 2  # never overwrites a directory


@pytest.mark.slow
def test_pushed_adapter_card_names_the_base_model(tmp_path, shapes_dir, hub):
    base_repo = hub.repo_id("tiny-base")
    HfApi().create_repo(base_repo)
    HfApi().upload_folder(repo_id=base_repo, folder_path=_base_dir(tmp_path, "test_resnet"))
    out, repo_id = tmp_path / "out", hub.repo_id("tiny-lora")
    settings = {
        **TINY_SETTINGS,
        "model": base_repo,
        "pretrained": True,
        "num_train_epochs": 1,
        "dataset": shapes_dir,
        "output_dir": out,
        "peft_method": "lora",
    }
    assert main(["train", *overrides(settings), "--repo_id", repo_id]) == 0
    assert "adapter_model.safetensors" in HfApi().list_repo_files(repo_id)
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "peft" and card.data.base_model == base_repo
    assert (
        json.loads(Path(HfApi().hf_hub_download(repo_id, "adapter_config.json")).read_text())["base_model_name_or_path"]
        == base_repo
    )
    torch.testing.assert_close(_logits(load_run(out)[0]), _logits(load_adapter_dir(out)[0].merge_and_unload()))


def test_bad_peft_settings_are_one_clear_error(tmp_path, shapes_dir):
    model, _ = build_model(ModelArguments(model=str(_base_dir(tmp_path, "test_resnet"))), LABELS)
    with pytest.raises(UserError, match="no module named 'nope'"):
        apply_adapter(model, PeftArguments(peft_method="lora", target_modules=["nope"]), train_batchnorm=True)
    settings = {**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": tmp_path / "o", "peft_method": "lora"}
    assert main(["train", *overrides(settings)]) == 2  # pretrained: false -> nothing to adapt
    assert main(["train", *overrides({**settings, "peft_method": "dora"})]) == 2
