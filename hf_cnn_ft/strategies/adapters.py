"""Parameter-efficient fine-tuning of CNNs with peft (LoRA, LoHa) — with the BatchNorm layers saved.

peft adapts Conv2d layers, but an adapter holds only the modules it was told about: without care,
the new classifier and every BatchNorm layer's running statistics (which move while the adapted
network trains) are silently missing when the adapter is loaded back. Here both go into
`modules_to_save`, so the adapter directory alone, on the pretrained base model, predicts exactly
what the trained model predicted.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import LoHaConfig, LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from hf_cnn_ft.config.sections import PeftArguments
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import BATCHNORM, head_linear, is_timm_model

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


def apply_adapter(model: PreTrainedModel, args: PeftArguments, train_batchnorm: bool) -> PeftModel:
    """Wraps `model` so that only the adapter, the head and (if `train_batchnorm`) BatchNorm train."""
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
