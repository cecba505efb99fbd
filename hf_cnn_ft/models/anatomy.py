"""Where things are in a classifier: the backbone, its stages from stem to head, the classifier layer."""

from __future__ import annotations

import re
from collections import OrderedDict

from torch import nn
from transformers import (
    PreTrainedModel,
    TimmWrapperForImageClassification,
)


def is_timm_model(model: PreTrainedModel) -> bool:
    return isinstance(model, TimmWrapperForImageClassification)


def timm_architecture(name: str) -> str | None:
    import timm

    return name if timm.is_model(name) else None


def head_linear(model: nn.Module, num_labels: int) -> nn.Linear:
    """The classifier layer: the last Linear producing one output per class."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not found:
        raise RuntimeError(f"no classifier layer with {num_labels} outputs in {type(model).__name__}")
    return found[-1]


def backbone_of(model: PreTrainedModel) -> nn.Module:
    return model.timm_model if is_timm_model(model) else model


def head_parameter_names(model: PreTrainedModel) -> set[str]:
    backbone = backbone_of(model)
    head = head_linear(backbone, model.config.num_labels)
    prefix = next(name for name, module in backbone.named_modules() if module is head)
    return {f"{prefix}.{p}" for p, _ in head.named_parameters()}


_NUMBERED = re.compile(r"(^|\.)(stages|blocks|layer|layers|features)\.(\d+)\.")


BATCHNORM = (nn.modules.batchnorm._BatchNorm,)


def stages(model: nn.Module) -> OrderedDict[str, list[str]]:
    """Parameter names grouped into stages, stem first, head last (names as in `model`)."""
    backbone = backbone_of(model)
    prefix = "timm_model." if is_timm_model(model) else ""
    head = head_linear(backbone, model.config.num_labels)
    head_names = {
        f"{name}.{p}"
        for name, module in backbone.named_modules()
        if module is head
        for p, _ in module.named_parameters()
    }
    groups: OrderedDict[str, list[str]] = OrderedDict()
    if is_timm_model(model) and hasattr(backbone, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(backbone, backbone.group_matcher(coarse=True))
        ordered = sorted(grouped)
        for position, key in enumerate(ordered):
            names = [n for n in grouped[key] if n not in head_names]
            if not names:
                continue
            label = "stem" if position == 0 else f"stage{position}"
            groups[label] = [prefix + n for n in names]
    else:
        current = "stem"
        for name, _ in backbone.named_parameters():
            if name in head_names:
                continue
            # Parameters before the first numbered block form the stem; unnumbered ones after a
            # block (a final conv or norm) join the stage before them.
            numbered = _NUMBERED.search(name)
            if numbered:
                current = f"stage{int(numbered.group(3)) + 1}"
            groups.setdefault(current, []).append(prefix + name)
    groups["head"] = [prefix + n for n in sorted(head_names)]
    return groups


def describe_stages(model: nn.Module) -> list[tuple[str, int]]:
    parameters = dict(model.named_parameters())
    return [(name, sum(parameters[p].numel() for p in names)) for name, names in stages(model).items()]
