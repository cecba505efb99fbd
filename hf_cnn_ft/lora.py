"""Parameter-efficient fine-tuning of CNNs with peft (LoRA, LoHa) — with the BatchNorm layers saved.

peft adapts Conv2d layers, but an adapter holds only the modules it was told about: without care,
the new classifier and every BatchNorm layer's running statistics (which move while the adapted
network trains) are silently missing when the adapter is loaded back. Here both go into
`modules_to_save`, so the adapter directory alone, on the pretrained base model, predicts exactly
what the trained model predicted.

An adapter run's output directory holds the peft adapter (`adapter_config.json`,
`adapter_model.safetensors`) beside the usual recipe, metrics and card; `load_adapter_dir`
rebuilds the base model from the recipe and `merge_adapter_dir` writes a plain model directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import LoHaConfig, LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from .artefacts import COMPLETION_MARKER, write_json
from .card import write_model_card
from .errors import UserError
from .finetuning import BATCHNORM
from .models import DataConfig, build_model, head_linear, is_timm_model, save_model
from .recipe import PEFT_METHODS, PeftArguments, Recipe, load_recipe

ADAPTER_CONFIG = "adapter_config.json"


def _head_name(model: PreTrainedModel) -> str:
    head = head_linear(model.timm_model if is_timm_model(model) else model, model.config.num_labels)
    return next(name for name, module in model.named_modules() if module is head)


def default_target_modules(model: PreTrainedModel) -> list[str]:
    """Every dense Conv2d (groups == 1: the 3x3 and 1x1 convolutions that hold most of a CNN's weights)
    and every Linear layer but the classifier. Depthwise convolutions are left to BatchNorm and the head:
    a low-rank update of a per-channel 3x3 filter saves nothing."""
    head = _head_name(model)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            names.append(name)
        elif isinstance(module, nn.Linear) and name != head:
            names.append(name)
    return names


def batchnorm_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, BATCHNORM)]


def _keep_in_inference_mode(module: nn.Module, _inputs) -> None:
    module.training = False


def validate_adapter_recipe(recipe: Recipe) -> None:
    """The recipe settings an adapter run cannot honour, refused with one line each."""
    if not recipe.peft.peft_method:
        return
    if not (recipe.model.pretrained or recipe.model.weights):
        raise UserError("peft adapts pretrained weights: with model.pretrained false use strategy full instead")
    if recipe.finetune.strategy not in ("two_phase", "full"):
        raise UserError("peft trains an adapter in the Trainer phase: use finetune.strategy two_phase or full")
    if recipe.finetune.unfreeze != "none":
        raise UserError("finetune.unfreeze does not combine with peft: the adapter keeps every base weight frozen")
    if recipe.finetune.freeze not in ("none", "0", ""):
        raise UserError("finetune.freeze does not combine with peft: the adapter already keeps the base weights")
    if recipe.finetune.l2sp_alpha or recipe.finetune.backbone_lr_multiplier != 1 or recipe.finetune.lr_decay != 1:
        raise UserError("l2sp_alpha, backbone_lr_multiplier and lr_decay apply to full weights, not to a peft adapter")
    if recipe.finetune.wise_alpha is not None:
        raise UserError("finetune.wise_alpha does not combine with peft: it interpolates full weights, not an adapter")


def apply_adapter(model: PreTrainedModel, args: PeftArguments, train_batchnorm: bool) -> PeftModel:
    """Wraps `model` so that only the adapter, the head and (if `train_batchnorm`) BatchNorm train."""
    if args.peft_method not in PEFT_METHODS:
        raise UserError(f"peft.peft_method must be one of {', '.join(PEFT_METHODS)}, got '{args.peft_method}'")
    targets = list(args.target_modules) if args.target_modules else default_target_modules(model)
    known = {name for name, _ in model.named_modules()}
    unknown = [t for t in targets if t not in known and not any(n.endswith("." + t) for n in known)]
    if unknown:
        raise UserError(
            f"peft.target_modules: no module named '{unknown[0]}' in the model; `hf-cnn-ft inspect MODEL --modules` "
            "lists them"
        )
    saved = [_head_name(model)] + (batchnorm_names(model) if train_batchnorm else [])
    common = {"r": args.lora_rank, "target_modules": targets, "modules_to_save": saved}
    if args.peft_method == "lora":
        config = LoraConfig(lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, **common)
    else:
        config = LoHaConfig(alpha=args.lora_alpha, module_dropout=args.lora_dropout, **common)
    config.base_model_name_or_path = None
    adapted = get_peft_model(model, config)
    if not train_batchnorm:
        for module in adapted.modules():
            if isinstance(module, BATCHNORM):
                module.register_forward_pre_hook(_keep_in_inference_mode)
    return adapted


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a peft wrapper's saved-module copies count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if isinstance(model, PeftModel):
        _, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
    return trainable, total


def is_adapter_dir(directory: str | Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def save_adapter(model: PeftModel, base_model: str | None, directory: Path) -> None:
    model.save_pretrained(directory)
    config_path = directory / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def load_adapter_dir(directory: str | Path) -> tuple[PeftModel, DataConfig]:
    """The base model rebuilt from the run's recipe, with the adapter loaded onto it."""
    directory = Path(directory)
    recipe_path, metrics_path = directory / "recipe.yaml", directory / "metrics.json"
    if not recipe_path.is_file() or not metrics_path.is_file():
        raise UserError(f"{directory} holds an adapter but no recipe.yaml/metrics.json to rebuild its base model from")
    recipe, summary = load_recipe(recipe_path), json.loads(metrics_path.read_text())
    base, _ = build_model(recipe.model, summary["label_names"])
    data_config = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in summary["preprocessing"].items()})
    try:
        model = PeftModel.from_pretrained(base, directory)
    except Exception as exc:  # peft raises several types for an adapter that does not fit the base
        raise UserError(
            f"the adapter in {directory} does not fit its base model '{recipe.model.model}' ({exc})"
        ) from None
    return model.eval(), data_config


def merge_adapter_dir(directory: str | Path, output: str | Path) -> Path:
    """Writes a plain model directory (adapter merged into the weights) with the run's other artefacts."""
    directory, output = Path(directory), Path(output)
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output} already exists and is not empty: choose a new directory for the merged model")
    model, data_config = load_adapter_dir(directory)
    merged = model.merge_and_unload()
    output.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        save_model(merged, data_config, output)
    for path in directory.iterdir():
        copied = path.is_file() and path.name != COMPLETION_MARKER and not path.name.startswith(("adapter_", "."))
        if copied and not (output / path.name).exists():
            shutil.copy2(path, output / path.name)
    summary = json.loads((directory / COMPLETION_MARKER).read_text())
    summary["peft"]["merged"] = True
    write_model_card(output, load_recipe(output / "recipe.yaml"), summary)
    write_json(output / COMPLETION_MARKER, summary)  # last: the merged directory is complete
    return output
