"""Quantization-aware training: the int8 model, its quantizers already in the graph, fine-tuned briefly on the
run's training images before conversion, for when quantizing after training costs more accuracy than a
recipe allows (`export --qat_epochs N`). BatchNorm statistics stay as trained (the graph runs in inference
mode); the weights and, where the quantizer learns them, the scales move at a small learning rate."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hf_cnn_ft.models.precision import flush_denormals_on_cpu

logger = logging.getLogger(__name__)

QAT_LEARNING_RATE = 1e-5
QAT_BATCH_SIZE = 16

FineTune = Callable[[nn.Module], None]


def quantization_aware_fine_tune(pixels: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0) -> FineTune:
    """A function that trains a fake-quantized model `epochs` times over (pixels, labels) with cross-entropy."""

    def fine_tune(model: nn.Module) -> None:
        flush_denormals_on_cpu()
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=QAT_LEARNING_RATE, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        for epoch in range(epochs):
            order, losses = rng.permutation(len(labels)), []
            for start in range(0, len(order), QAT_BATCH_SIZE):
                chosen = order[start : start + QAT_BATCH_SIZE]
                images = torch.from_numpy(pixels[chosen])
                if rng.random() < 0.5:  # a mirrored view half of the time: the one augmentation every recipe allows
                    images = images.flip(-1)
                loss = nn.functional.cross_entropy(model(images), torch.from_numpy(labels[chosen]).long())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            logger.info("quantization-aware training, epoch %d of %d: loss %.4f", epoch + 1, epochs, np.mean(losses))

    return fine_tune


def pt2e_int8(
    module: nn.Module,
    example: torch.Tensor,
    quantizer,
    calibration: np.ndarray,
    fold: bool = True,
    fine_tune: FineTune | None = None,
) -> nn.Module:
    """PyTorch's PT2E int8 with a runtime's quantizer: the exported graph (any batch size up to 64) observed on
    `calibration`, then converted to quantized operations. With `fine_tune` (the quantizer configured for
    quantization-aware training), the graph is fine-tuned with its fake quantizers in place in between."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    batch = torch.export.Dim("batch", min=1, max=64)
    graph = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},)).module()
    if fine_tune is None:
        prepared = prepare_pt2e(graph, quantizer)
    else:
        # BatchNorm folded into its convolution first, as prepare_pt2e does: its statistics stay as trained, and
        # PT2E's own QAT conv-BN pattern, which divides by the BatchNorm scale, cannot meet a zero scale (NaN).
        _fuse_conv_bn_(graph)
        prepared = prepare_qat_pt2e(graph, quantizer)
        move_exported_model_to_eval(prepared)  # dropout off
    with torch.no_grad():  # the fake quantizers of QAT start from the calibration ranges too
        for start in range(0, len(calibration), 8):
            prepared(torch.from_numpy(calibration[start : start + 8]))
    if fine_tune is not None:
        fine_tune(prepared)
    return convert_pt2e(prepared, fold_quantize=fold)
