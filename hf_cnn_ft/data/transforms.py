"""Train and eval transforms, test-time views and batch mixing, built from the model's `DataConfig`.

`data.inputs` applies them lazily, on the raw ``image`` column as rows are read, so nothing is
pre-computed and the Trainer can never drop the image column before they see it (transformers #17894).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from hf_cnn_ft.config.sections import AugmentArguments
from hf_cnn_ft.data.data_config import DataConfig

_INTERPOLATION = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


def interpolation_mode(name: str) -> v2.InterpolationMode:
    return _INTERPOLATION.get(name, v2.InterpolationMode.BILINEAR)


def _to_normalised_tensor(config: DataConfig) -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)]


def eval_transform(config: DataConfig) -> v2.Compose:
    """Resize the shorter side (or, with crop_mode squash, both sides) to input_size / crop_pct, then centre-crop."""
    resize = (config.resize_size, config.resize_size) if config.crop_mode == "squash" else config.resize_size
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=interpolation_mode(config.interpolation), antialias=True),
            v2.CenterCrop(config.input_size),
            *_to_normalised_tensor(config),
        ]
    )


def strong_transform(config: DataConfig, augment: AugmentArguments) -> v2.Compose:
    """FixMatch's strong view of an unlabeled image: the training transform with RandAugment (2 operations at
    magnitude 10) where the recipe sets no policy of its own."""
    if augment.auto_augment is None:
        augment = dataclasses.replace(augment, auto_augment="randaugment", randaugment_ops=2, randaugment_magnitude=10)
    return train_transform(config, augment)


_FLIPS: dict[str, list[list[Callable]]] = {
    "none": [],
    "horizontal": [[v2.RandomHorizontalFlip(1.0)]],
    "vertical": [[v2.RandomVerticalFlip(1.0)]],
    "both": [
        [v2.RandomHorizontalFlip(1.0)],
        [v2.RandomVerticalFlip(1.0)],
        [v2.RandomHorizontalFlip(1.0), v2.RandomVerticalFlip(1.0)],
    ],
}


def evaluation_views(transform: Callable, flips: str) -> list[Callable]:
    """The evaluation transform followed by each flip of `augment.test_time_flips`: test-time augmentation
    averages the model's logits over these views of every image. The first view is the plain one."""
    return [transform, *(v2.Compose([transform, *flip]) for flip in _FLIPS[flips])]


def train_transform(config: DataConfig, augment: AugmentArguments) -> v2.Compose:
    """Random-resized crop and the recipe's augmentations, then the model's normalisation."""
    low, high = augment.crop_scale
    steps: list[Callable] = [
        v2.RandomResizedCrop(
            config.input_size, scale=(low, high), interpolation=interpolation_mode(config.interpolation), antialias=True
        )
    ]
    if augment.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(augment.hflip))
    if augment.vflip > 0:
        steps.append(v2.RandomVerticalFlip(augment.vflip))
    if augment.rotation > 0:
        steps.append(v2.RandomRotation(augment.rotation, interpolation=interpolation_mode(config.interpolation)))
    if augment.color_jitter > 0:
        s = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    if augment.auto_augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=augment.randaugment_ops, magnitude=augment.randaugment_magnitude))
    elif augment.auto_augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    steps.extend(_to_normalised_tensor(config))
    if augment.random_erasing > 0:
        steps.append(v2.RandomErasing(p=augment.random_erasing, value=0))
    return v2.Compose(steps)


def batch_mixer(augment: AugmentArguments, num_classes: int) -> Callable | None:
    """MixUp and/or CutMix on a whole batch: (pixels, class indices) -> (mixed pixels, soft labels)."""
    mixers = []
    if augment.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=augment.mixup_alpha, num_classes=num_classes))
    if augment.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=augment.cutmix_alpha, num_classes=num_classes))
    if not mixers or augment.mix_prob == 0:
        return None
    chosen = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
    return v2.RandomApply([chosen], p=augment.mix_prob) if augment.mix_prob < 1 else chosen
