import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    EfficientNetConfig,
    EfficientNetForImageClassification,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    TimmWrapperForImageClassification,
)

from hf_cnn_ft.config.sections import ModelArguments
from hf_cnn_ft.data.data_config import SMALL_IMAGE_INPUT, DataConfig, for_small_images
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import head_linear
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.models.io import load_model, save_model

LABELS = ["cat", "dog", "fox"]

NATIVE = {
    "resnet": lambda: ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])),
    "convnext": lambda: ConvNextForImageClassification(
        ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    ),
    "efficientnet": lambda: EfficientNetForImageClassification(
        EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, image_size=32, hidden_dim=128)
    ),
    "mobilenet_v2": lambda: MobileNetV2ForImageClassification(MobileNetV2Config(depth_multiplier=0.25, image_size=32)),
}


def train_step_changes_weights(model, size: int) -> None:
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(pixel_values=torch.randn(4, 3, size, size), labels=torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed, "a training step changed nothing"
    assert out.logits.shape == (4, len(LABELS))


@pytest.mark.parametrize(
    "name, size",
    [
        ("test_resnet", 32),
        ("resnet18", 32),
        ("test_convnext", 32),
        ("test_efficientnet", 32),
        ("mobilenetv3_small_050", 32),
    ],
)
def test_timm_backbones_get_a_fresh_head_and_train(name, size):
    model, data_config = build_model(ModelArguments(model=name, pretrained=False, image_size=size), LABELS)
    assert isinstance(model, TimmWrapperForImageClassification)
    assert model.config.id2label == dict(enumerate(LABELS)) and model.config.label2id["fox"] == 2
    head = head_linear(model.timm_model, 3)
    assert head.out_features == 3 and torch.count_nonzero(head.weight) == 0  # zero-initialised
    assert data_config.input_size == size
    train_step_changes_weights(model, size)


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("vgg11_bn", 64), ("inception_v3", 299)])
def test_classic_families_vgg_and_inception(name, size):
    model, data_config = build_model(ModelArguments(model=name, pretrained=False), LABELS)
    assert head_linear(model.timm_model, 3).out_features == 3
    if name == "inception_v3":
        assert data_config.input_size == 299
    train_step_changes_weights(model, size)


@pytest.mark.parametrize("family", list(NATIVE))
def test_native_transformers_backbones_from_a_local_directory(tmp_path, family):
    NATIVE[family]().save_pretrained(tmp_path / family)
    model, data_config = build_model(ModelArguments(model=str(tmp_path / family), image_size=32), LABELS)
    assert type(model).__name__.lower().startswith(family.replace("_", ""))
    assert model.config.num_labels == 3 and model.config.id2label[1] == "dog"
    assert head_linear(model, 3).out_features == 3
    train_step_changes_weights(model, 32)
    # Saved with an image processor, the directory loads back with the same logits.
    save_model(model, data_config, tmp_path / "saved")
    loaded, loaded_config = load_model(tmp_path / "saved")
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    # Same eval transform (crop_pct itself is stored as the resize size, so it may round).
    for attribute in ("input_size", "resize_size", "interpolation", "mean", "std"):
        assert getattr(loaded_config, attribute) == pytest.approx(getattr(data_config, attribute))


def test_weights_file_loads_into_the_backbone_only(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pth"):
        model, _ = build_model(ModelArguments(model="test_resnet", weights=str(tmp_path / file)), LABELS)
        torch.testing.assert_close(model.timm_model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
        assert model.timm_model.fc.out_features == 3


def test_weights_of_another_architecture_name_the_first_mismatch(tmp_path):
    save_file(timm.create_model("test_efficientnet").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError) as info:
        build_model(ModelArguments(model="test_resnet", weights=str(tmp_path / "w.safetensors")), LABELS)
    assert "does not fit model 'test_resnet'" in str(info.value) and "tensor '" in str(info.value)


def test_unknown_model_name_suggests_close_timm_names():
    with pytest.raises(UserError) as info:
        build_model(ModelArguments(model="resnet5O"), LABELS)
    assert "unknown model 'resnet5O'" in str(info.value) and "resnet50" in str(info.value)


def test_pretrained_download_failure_says_what_to_do_offline():
    with pytest.raises(UserError) as info:
        build_model(ModelArguments(model="test_resnet", pretrained=True), LABELS)
    said = str(info.value)
    assert "model.weights" in said and "model.pretrained: false" in said and "import-weights --known" in said


def test_a_fine_tuned_directory_with_the_same_labels_keeps_its_head(tmp_path):
    model, data_config = build_model(
        ModelArguments(model="test_resnet", pretrained=False, zero_init_head=False), LABELS
    )
    save_model(model, data_config, tmp_path / "m")
    again, _ = build_model(ModelArguments(model=str(tmp_path / "m")), LABELS)
    torch.testing.assert_close(again.timm_model.fc.weight, model.timm_model.fc.weight)
    relabelled, data_config = build_model(ModelArguments(model=str(tmp_path / "m")), ["a", "b"])
    assert relabelled.timm_model.fc.out_features == 2
    save_model(relabelled, data_config, tmp_path / "relabelled")
    assert json.loads((tmp_path / "relabelled" / "config.json").read_text())["label_names"] == ["a", "b"]


def test_timm_model_directory_loads_with_auto_classes(tmp_path):
    model, data_config = build_model(ModelArguments(model="test_convnext", pretrained=False, image_size=40), LABELS)
    save_model(model, data_config, tmp_path / "m")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "m")
    assert loaded.config.id2label[2] == "fox"
    assert list(loaded.config.pretrained_cfg["input_size"]) == [3, 40, 40]


def test_unreachable_hub_model_is_one_clear_error():
    with pytest.raises(UserError) as info:
        build_model(ModelArguments(model="microsoft/resnet-50"), LABELS)
    assert "Hub repo microsoft/resnet-50 not found" in str(info.value)  # the loopback Hub does not hold it


def test_pretrained_false_on_a_directory_builds_the_architecture_randomly_initialised(tmp_path):
    model, data_config = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    save_model(model, data_config, tmp_path / "m")
    fresh, _ = build_model(ModelArguments(model=str(tmp_path / "m"), pretrained=False), ["x", "y"])
    assert type(fresh) is type(model) and fresh.config.num_labels == 2
    assert not torch.equal(fresh.timm_model.conv1[0].weight, model.timm_model.conv1[0].weight)


def test_drop_path_and_dropout_reach_the_backbone_and_survive_saving(tmp_path):
    model, data_config = build_model(
        ModelArguments(model="test_efficientnet", pretrained=False, drop_rate=0.3, drop_path_rate=0.2), LABELS
    )
    assert model.timm_model.drop_rate == 0.3
    rates = [m.drop_prob for m in model.timm_model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) > 0
    save_model(model, data_config, tmp_path / "m")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "m")
    assert loaded.timm_model.drop_rate == 0.3
    assert timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).drop_rate == 0.3


@pytest.mark.parametrize("pool", ["avgmax", "catavgmax"])
def test_global_pool_reaches_the_timm_backbone_and_survives_saving(tmp_path, pool):
    model, data_config = build_model(
        ModelArguments(model="test_efficientnet", pretrained=False, global_pool=pool), LABELS
    )
    assert model.timm_model.global_pool.pool_type == pool
    widened = 2 if pool.startswith("cat") else 1
    assert model.timm_model.classifier.in_features == widened * model.timm_model.num_features
    save_model(model, data_config, tmp_path / "m")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "m")
    assert loaded.timm_model.global_pool.pool_type == pool
    assert timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).global_pool.pool_type == pool
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=pixels).logits, model.eval()(pixel_values=pixels).logits)


def test_global_pool_on_a_transformers_backbone_is_one_clear_line(tmp_path):
    NATIVE["resnet"]().save_pretrained(tmp_path / "r")
    with pytest.raises(UserError, match="model.global_pool needs a timm backbone"):
        build_model(ModelArguments(model=str(tmp_path / "r"), global_pool="max"), LABELS)


def test_drop_path_on_a_native_model_without_it_is_a_clear_error(tmp_path):
    NATIVE["resnet"]().save_pretrained(tmp_path / "r")
    with pytest.raises(UserError, match="has no drop-path setting"):
        build_model(ModelArguments(model=str(tmp_path / "r"), drop_path_rate=0.1), LABELS)
    NATIVE["convnext"]().save_pretrained(tmp_path / "c")
    model, _ = build_model(ModelArguments(model=str(tmp_path / "c"), drop_path_rate=0.1), LABELS)
    assert model.config.drop_path_rate == 0.1


def test_small_images_get_a_smaller_whole_image_input_and_others_keep_the_models_own(caplog):
    caplog.set_level("INFO", logger="hf_cnn_ft")
    own = DataConfig(input_size=224, crop_pct=0.875)
    assert for_small_images(own, 300) == own
    small = for_small_images(own, 28)
    assert (small.input_size, small.crop_pct) == (SMALL_IMAGE_INPUT, 1.0)
    assert "median shorter edge 28 px" in caplog.text
    assert for_small_images(DataConfig(input_size=96), 25).input_size == 96  # never above the model's own
    # build_model adapts only what the recipe leaves unset
    _, chosen = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS, source_side=25)
    assert (chosen.input_size, chosen.crop_pct) == (min(160, SMALL_IMAGE_INPUT), 1.0)
    args = ModelArguments(model="test_resnet", pretrained=False, image_size=48)
    assert build_model(args, LABELS, source_side=25)[1].input_size == 48
    args = ModelArguments(model="test_resnet", pretrained=False, crop_pct=0.9)
    assert build_model(args, LABELS, source_side=25)[1].crop_pct == 0.9
    assert build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)[1].input_size == 160


@pytest.mark.parametrize("source", ["name", "directory"])
def test_a_randomly_initialised_timm_backbone_is_initialised_as_timm_does(source, tmp_path):
    """The transformers wrapper's own init (N(0, 0.02) everywhere) leaves a deep random network's features
    near 1e-6: a from-scratch baseline or a probe on them could not learn anything."""
    name = "test_resnet"
    if source == "directory":
        save_model(*build_model(ModelArguments(model=name, pretrained=False), LABELS), tmp_path / "saved")
        name = str(tmp_path / "saved")
    model = build_model(ModelArguments(model=name, pretrained=False), LABELS)[0].eval()
    colours = torch.zeros(3, 3, 64, 64)
    for channel in range(3):
        colours[channel, channel] = 2.0  # a red, a green and a blue image
    with torch.no_grad():
        features = model.timm_model.forward_head(model.timm_model.forward_features(colours), pre_logits=True)
    assert features.std(dim=0).mean() > 1e-2  # the three colours give different features
