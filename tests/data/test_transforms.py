import numpy as np
import pytest
import timm.data
import torch
from PIL import Image

from hf_cnn_ft.config.sections import AugmentArguments, ModelArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.dataset import IMAGE_COLUMN
from hf_cnn_ft.data.inputs import with_pixel_values
from hf_cnn_ft.data.transforms import eval_transform, train_transform
from hf_cnn_ft.models.build import build_model


def photo(width=90, height=60, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def test_eval_transform_equals_timms_own_for_the_models_config():
    # Same pixels as the TimmWrapper image processor, so pipeline() sees what evaluation saw.
    model, config = build_model(ModelArguments(model="test_efficientnet", pretrained=False, image_size=56), ["a", "b"])
    timm_cfg = timm.data.resolve_data_config(pretrained_cfg=dict(model.config.pretrained_cfg))
    reference = timm.data.create_transform(**timm_cfg, is_training=False)
    image = photo()
    torch.testing.assert_close(eval_transform(config)(image), reference(image), atol=1e-5, rtol=0)


def test_eval_transform_resizes_then_centre_crops():
    config = DataConfig(input_size=32, crop_pct=0.5, mean=(0, 0, 0), std=(1, 1, 1))
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (16, 16, 48, 48))  # the centre half is white
    out = eval_transform(config)(image)
    assert out.shape == (3, 32, 32)
    assert out.min() > 0.95  # only the white centre survives the crop


@pytest.mark.parametrize(
    "augment",
    [
        AugmentArguments(),
        AugmentArguments(vflip=0.5, rotation=30, color_jitter=0.4, random_erasing=1.0),
        AugmentArguments(auto_augment="randaugment", randaugment_magnitude=15),
        AugmentArguments(auto_augment="TrivialAugment"),
    ],
)
def test_train_transform_makes_normalised_crops_of_the_input_size(augment):
    config = DataConfig(input_size=40)
    out = train_transform(config, augment)(photo())
    assert out.shape == (3, 40, 40) and out.dtype == torch.float32


def test_train_transform_is_random_and_eval_is_not():
    config = DataConfig(input_size=32)
    image = photo()
    train = train_transform(config, AugmentArguments())
    assert not torch.equal(train(image), train(image))
    assert torch.equal(eval_transform(config)(image), eval_transform(config)(image))


def test_lazy_transform_keeps_the_raw_image_column_until_read():
    import datasets

    raw = datasets.Dataset.from_dict({IMAGE_COLUMN: [photo(seed=i) for i in range(3)], "label": [0, 1, 0]})
    raw = raw.cast_column(IMAGE_COLUMN, datasets.Image())
    transformed = with_pixel_values(raw, eval_transform(DataConfig(input_size=24)))
    assert raw.column_names == [IMAGE_COLUMN, "label"]  # nothing precomputed, nothing dropped
    row = transformed[1]
    assert row["pixel_values"].shape == (3, 24, 24) and row["labels"] == 1
