"""The optimizer's parameter groups: a learning rate per stage (the head's, then lower down the backbone),
and no weight decay on BatchNorm and biases."""

from __future__ import annotations

from typing import Any

from torch import nn

from hf_cnn_ft.models.anatomy import stages


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    backbone_multiplier: float = 1.0,
    lr_decay: float = 1.0,
    include_frozen: bool = False,
) -> list[dict[str, Any]]:
    """Optimizer groups per stage: the head at `learning_rate`, backbone stages at
    `learning_rate * backbone_multiplier * lr_decay**depth` (depth 1 for the stage below the head),
    and no weight decay on 1-D parameters (BatchNorm, biases). Frozen parameters are left out unless
    `include_frozen` (a schedule will unfreeze them: until then they have no gradient, so the
    optimizer skips them — no update, no decay, no state).
    """
    named = dict(model.named_parameters())
    ordered = list(stages(model).items())
    groups = []
    for index, (stage, names) in enumerate(ordered):
        depth = len(ordered) - 1 - index
        scale = 1.0 if depth == 0 else backbone_multiplier * lr_decay**depth
        trainable = [named[n] for n in names if named[n].requires_grad or include_frozen]
        for decayed in (True, False):
            chosen = [p for p in trainable if (p.ndim > 1) == decayed]
            if chosen:
                groups.append(
                    {
                        "params": chosen,
                        "lr": learning_rate * scale,
                        "weight_decay": weight_decay if decayed else 0.0,
                        "stage": stage,
                    }
                )
    return groups


def adapter_parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float) -> list[dict[str, Any]]:
    """A peft-wrapped model trains only its adapter, head and BatchNorm: one learning rate, and no
    weight decay on 1-D parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "lr": learning_rate, "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "lr": learning_rate, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
