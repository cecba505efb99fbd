"""The Trainer subclass that adapts transformers' Trainer to fine-tuning CNNs."""

from __future__ import annotations

from torch.utils.data import DataLoader
from transformers import Trainer


class FineTuneTrainer(Trainer):
    """`Trainer` whose training loader drops the last, incomplete batch.

    A BatchNorm layer cannot train on a batch of one image (and a tiny last batch gives a noisy
    step), so, like timm's train.py, training skips the remainder; evaluation never drops images.
    """

    def get_train_dataloader(self) -> DataLoader:
        per_step = self._train_batch_size * max(1, self.args.world_size)
        drop_remainder = self.train_dataset is not None and len(self.train_dataset) >= per_step
        configured = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = configured or drop_remainder
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = configured
