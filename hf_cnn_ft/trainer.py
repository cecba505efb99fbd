"""The Trainer subclass that adapts transformers' Trainer to fine-tuning CNNs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer


class FineTuneTrainer(Trainer):
    """`Trainer` with class-weighted loss, and a training loader that drops the last, incomplete batch.

    A BatchNorm layer cannot train on a batch of one image (and a tiny last batch gives a noisy
    step), so, like timm's train.py, training skips the remainder; evaluation never drops images.
    """

    def __init__(self, *args, loss_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_weights = loss_weights

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        if self.loss_weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weights = self.loss_weights.to(outputs.logits.device, outputs.logits.dtype)
        loss = nn.functional.cross_entropy(
            outputs.logits, labels, weight=weights, label_smoothing=self.args.label_smoothing_factor
        )
        return (loss, outputs) if return_outputs else loss

    def get_train_dataloader(self) -> DataLoader:
        per_step = self._train_batch_size * max(1, self.args.world_size)
        drop_remainder = self.train_dataset is not None and len(self.train_dataset) >= per_step
        configured = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = configured or drop_remainder
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = configured
