"""The linear probe one level deeper: train the last N stages with the head on cached inputs.

The stages before them are frozen and in inference mode, so they map an image (one view of it) to
the same tensor every epoch: that tensor is computed once and cached, as the linear probe caches
pooled features. Training then runs only the last stages, and no image is decoded, augmented or
pushed through the early, high-resolution layers again (benchmarks/RESULTS.md, "The stage probe on
ELPV": MobileNetV2's last three stages at 300 px, better and faster than fine-tuning the whole network).

The cached tensor enters the model at the first trained stage through a forward pre-hook while the
stages before it run on a 32 px placeholder, so any backbone whose stages run one after another
works as it is; a check on real images refuses one that does not (a skip connection around the
entry, say) before anything trains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import torch
from datasets import Dataset
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from hf_cnn_ft.config.sections import FinetuneArguments
from hf_cnn_ft.data.inputs import pixel_batches
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import BATCHNORM, stages
from hf_cnn_ft.strategies.probe import (
    ProbeInputs,
    fit_on_cache,
    label_tensor,
    module_input,
    module_inputs,
    steps_of,
)

logger = logging.getLogger(__name__)

PLACEHOLDER_SIZE = 32  # the smallest input every supported backbone reduces to at least 1x1
CACHE_MEMORY_FRACTION = 0.5
WARMUP_FRACTION = 0.1  # a fresh head's first gradients would otherwise jolt the pretrained stages


def entry_module(model: nn.Module, stage: str) -> tuple[str, nn.Module]:
    """The outermost module where `stage` begins: it holds the stage's first parameter and none of
    an earlier stage's (e.g. `timm_model.blocks.5`, `timm_model.layer3`)."""
    groups = stages(model)
    names = list(groups)
    earlier = {p for s in names[: names.index(stage)] for p in groups[s]}
    path = groups[stage][0].split(".")[:-1]
    modules = dict(model.named_modules())
    entry = ".".join(path)
    for depth in range(len(path) - 1, 0, -1):
        candidate = ".".join(path[:depth])
        if any(f"{candidate}.{p}" in earlier for p, _ in modules[candidate].named_parameters()):
            break
        entry = candidate
    return entry, modules[entry]


@contextmanager
def _entering_with(entry: nn.Module, inputs: torch.Tensor) -> Iterator[None]:
    handle = entry.register_forward_pre_hook(lambda _module, _inputs: (inputs,))
    try:
        yield
    finally:
        handle.remove()


def logits_from_stage_inputs(model: nn.Module, entry: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's logits when `inputs` replace what `entry` would receive from the earlier stages."""
    placeholder = inputs.new_zeros(len(inputs), 3, PLACEHOLDER_SIZE, PLACEHOLDER_SIZE)
    with _entering_with(entry, inputs):
        return model(pixel_values=placeholder).logits


def check_entry(model: nn.Module, entry_name: str, entry: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Refuses a backbone whose logits do not follow from the entry stage's input alone; returns
    that input for `pixels`."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = model(pixel_values=pixels).logits
            inputs = module_input(model, entry, pixels)
            rebuilt = logits_from_stage_inputs(model, entry, inputs)
    except Exception as error:  # the placeholder may not fit an unusual stem
        raise UserError(
            f"finetune.probe_stages cannot start this backbone at {entry_name} ({error}); use probe_stages 0"
        ) from error
    finally:
        model.train(was_training)
    if not torch.allclose(rebuilt, expected, rtol=1e-4, atol=1e-4):
        raise UserError(
            f"finetune.probe_stages: this backbone's output does not follow from the input of {entry_name} alone "
            "(an earlier stage feeds a later one directly); use probe_stages 0"
        )
    return inputs


def available_memory() -> int:
    return psutil.virtual_memory().available


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def check_cache_fits(entry_name: str, per_image_bytes: int, images: int) -> None:
    """Refuses a cache that would take more than half the free memory, before hours of extraction."""
    needed, available = per_image_bytes * images, available_memory()
    if needed > CACHE_MEMORY_FRACTION * available:
        raise UserError(
            f"finetune.probe_stages: caching what {entry_name} receives takes {_size(needed)} for {images} images, "
            f"more than half the {_size(available)} of free memory; lower feature_views or "
            "image_size, or probe fewer stages (a later, smaller entry)"
        )


def trained_stage_names(model: nn.Module, count: int) -> list[str]:
    """The last `count` stages before the head, validated against the model."""
    names = list(stages(model))[:-1]
    if not 0 < count < len(names):
        raise UserError(
            f"finetune.probe_stages must be between 1 and {len(names) - 1} for this model (its stages: "
            f"{', '.join(names)}), got {count}"
        )
    return names[-count:]


def _set_modes(model: nn.Module, trained: set[str], train_batchnorm: bool) -> None:
    """Training mode for the trained stages and the head; inference mode for everything before them
    (their BatchNorm statistics must not move on the placeholder) and, if asked, for BatchNorm."""
    model.train()
    for name, module in model.named_modules():
        own = {f"{name}.{p}" if name else p for p, _ in module.named_parameters()}
        if own and not own & trained:
            module.eval()
        elif isinstance(module, BATCHNORM) and not train_batchnorm:
            module.eval()


def _trained_parameter_names(model: nn.Module, trained_stages: list[str], train_batchnorm: bool) -> set[str]:
    groups = stages(model)
    trained = set(groups["head"]) | {p for s in trained_stages for p in groups[s]}
    if not train_batchnorm:  # BatchNorm stays as pretrained: statistics and affine parameters alike
        trained -= {
            f"{name}.{p}"
            for name, module in model.named_modules()
            if isinstance(module, BATCHNORM)
            for p, _ in module.named_parameters()
        }
    return trained


def _optimizer_and_schedule(
    model: nn.Module, trained: set[str], finetune: FinetuneArguments, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW: the head at head_learning_rate, the stages at backbone_lr_multiplier times that;
    linear warmup, then cosine decay."""
    parameters = dict(model.named_parameters())
    head = set(stages(model)["head"])
    optimizer = torch.optim.AdamW(
        [
            {"params": [parameters[n] for n in sorted(trained & head)], "lr": finetune.head_learning_rate},
            {
                "params": [parameters[n] for n in sorted(trained - head)],
                "lr": finetune.head_learning_rate * finetune.backbone_lr_multiplier,
            },
        ],
        weight_decay=finetune.head_weight_decay,
    )
    warmup = max(1, int(WARMUP_FRACTION * steps))
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, steps)


def _logits_in_batches(model: nn.Module, entry: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat(
            [
                logits_from_stage_inputs(model, entry, inputs[i : i + batch_size])
                for i in range(0, len(inputs), batch_size)
            ]
        )


def probe_last_stages(model: nn.Module, probe: ProbeInputs) -> list[dict[str, float]]:
    """Trains the last `probe_stages` stages and the head on cached inputs of the first of them:
    one unaugmented view plus `feature_views - 1` augmented ones. Returns the per-epoch history."""
    args = probe.finetune
    torch.manual_seed(probe.seed)
    started = time.perf_counter()
    trained_stages = trained_stage_names(model, args.probe_stages)
    entry_name, entry = entry_module(model, trained_stages[0])
    inputs, labels, validation = _cache_entry_inputs(model, entry_name, entry, probe)
    logger.info(
        "probing the head and %s on %d cached inputs of %s %s (%.0f s to cache)",
        ", ".join(trained_stages),
        len(inputs),
        entry_name,
        tuple(inputs.shape[1:]),
        time.perf_counter() - started,
    )
    trained = _trained_parameter_names(model, trained_stages, probe.train_batchnorm)
    parameters = dict(model.named_parameters())
    requires_grad = {name: p.requires_grad for name, p in parameters.items()}
    for name, parameter in parameters.items():
        parameter.requires_grad_(name in trained)
    optimizer, schedule = _optimizer_and_schedule(model, trained, args, steps_of(len(inputs), args))
    hooks = probe.hooks(
        train_mode=lambda: _set_modes(model, trained, probe.train_batchnorm),
        validation_logits=lambda cached: _logits_in_batches(model, entry, cached, args.head_batch_size),
    )
    try:
        history = fit_on_cache(
            lambda cached: logits_from_stage_inputs(model, entry, cached),
            inputs,
            labels,
            optimizer,
            schedule,
            args,
            probe.seed,
            validation,
            probe.loss_weights,
            hooks,
        )
    finally:
        for name, parameter in parameters.items():
            parameter.requires_grad_(requires_grad[name])
        model.train()
    caching = time.perf_counter() - started - (history[-1]["seconds"] if history else 0.0)
    for entry_ in history:  # seconds since the probe started, caching included, as in the linear probe
        entry_["seconds"] += caching
    return history


def _cache_entry_inputs(
    model: nn.Module, entry_name: str, entry: nn.Module, probe: ProbeInputs
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(training inputs, their labels, (validation inputs, labels)) of `entry`, checked and cached once."""
    train, validation, channels_last = probe.train_split, probe.validation_split, probe.channels_last
    sample = next(pixel_batches(train.select(range(min(4, len(train)))), probe.eval_transform, 4, channels_last))
    sample_inputs = check_entry(model, entry_name, entry, sample)
    per_image_bytes = sample_inputs[0].numel() * sample_inputs.element_size()
    check_cache_fits(entry_name, per_image_bytes, len(train) * probe.finetune.feature_views + len(validation))

    def cache(split: Dataset, transform: Callable) -> torch.Tensor:
        return module_inputs(model, entry, split, transform, channels_last=channels_last, precision=probe.precision)

    views = [cache(train, probe.eval_transform)]
    views += [cache(train, probe.train_transform) for _ in range(probe.finetune.feature_views - 1)]
    labels = torch.cat([label_tensor(train)] * len(views))
    return torch.cat(views), labels, (cache(validation, probe.eval_transform), label_tensor(validation))
