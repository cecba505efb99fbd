"""Where the model looked: Grad-CAM (Selvaraju et al. 2017, captum's `LayerGradCam`) on the output of
the backbone's last stage, for timm and native transformers backbones alike."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image
from torch import nn

from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.data.inputs import pixel_values
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import stages


def _feature_maps_in_order(model: nn.Module, candidates: dict[str, nn.Module], pixels: torch.Tensor) -> list[tuple]:
    """(name, spatial) for the candidates whose output is a feature map (N, C, H, W), in the order their
    forward passes end; spatial: H * W > 1."""
    finished: list[tuple[str, bool]] = []

    def record(name: str):
        def hook(module, inputs, output):
            # Inputs are square crops, so an NCHW map ends in H == W; this also skips the channels-last
            # (N, H, W, C) tensors inside ConvNeXt blocks.
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] == output.shape[-2]:
                finished.append((name, output.shape[-2] * output.shape[-1] > 1))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in candidates.items()]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(pixel_values=pixels)  # inference mode: no BatchNorm statistics move
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return finished


def _modules_of_stages(model: nn.Module) -> dict[str, tuple[int, nn.Module]]:
    """Every module that holds parameters of one backbone stage only -> (stage position, module)."""
    groups = list(stages(model).values())[:-1]  # the head is not a stage of the backbone
    owner = {name: position for position, names in enumerate(groups) for name in names}
    found = {}
    for name, module in model.named_modules():
        positions = {owner.get(f"{name}.{p}") for p, _ in module.named_parameters()}
        if len(positions) == 1 and None not in positions:
            found[name] = (positions.pop(), module)
    return found


def last_stage_layer(model: nn.Module, pixels: torch.Tensor) -> tuple[str, nn.Module]:
    """The module whose output is the backbone's last stage (the stage anatomy `inspect` prints): of the
    last stage that produces a spatial feature map (timm groups a final norm as a stage of its own), the
    module that finishes last. An input so small that every map is 1 x 1 gets the last map there is."""
    modules = _modules_of_stages(model)
    maps = _feature_maps_in_order(model, {name: module for name, (_, module) in modules.items()}, pixels[:1])
    if not maps:
        raise UserError(
            f"cannot find the last stage of {type(model).__name__} for Grad-CAM: no module of its backbone "
            "stages outputs a feature map; set report.top_losses: 0 and report.correct_per_class: 0"
        )
    spatial = [name for name, is_spatial in maps if is_spatial]
    if spatial:
        last = max(modules[name][0] for name in spatial)
        chosen = [name for name in spatial if modules[name][0] == last][-1]
    else:
        chosen = maps[-1][0]
    return chosen, modules[chosen][1]


def grad_cam(model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Heat maps (N, H, W) in [0, 1], at the input's resolution, of the evidence for class `targets`."""
    model.eval()
    _, layer = last_stage_layer(model, pixels)
    cam = LayerGradCam(lambda inputs: model(pixel_values=inputs).logits, layer)
    with torch.enable_grad():
        inputs = pixels.detach().clone().requires_grad_(True)
        maps = cam.attribute(inputs, target=targets.tolist(), relu_attributions=True)
    # A model trained in bfloat16 keeps an autocast forward: its maps come back in bfloat16.
    maps = maps.detach().float()
    maps = LayerAttribution.interpolate(maps, tuple(pixels.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (maps / peak).clamp(0, 1)


def grad_cam_views(
    model: nn.Module, data_config: DataConfig, images: Sequence[Image.Image], targets: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """What the model sees of each image (N, H, W, 3 in [0, 1]: the evaluation crop, unnormalised) and the
    Grad-CAM of class `targets` over it (N, H, W)."""
    pixels = pixel_values(images, eval_transform(data_config))
    heat = grad_cam(model, pixels, torch.as_tensor(list(targets)))
    mean, std = torch.tensor(data_config.mean)[:, None, None], torch.tensor(data_config.std)[:, None, None]
    shown = (pixels * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
    return shown.numpy(), heat.numpy()
