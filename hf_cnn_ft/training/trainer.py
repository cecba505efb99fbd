"""The Trainer subclass that adapts transformers' Trainer to fine-tuning CNNs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from accelerate.data_loader import prepare_data_loader
from peft import PeftModel
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import has_length

from hf_cnn_ft.data.streaming import StreamingImages
from hf_cnn_ft.models.anatomy import stages
from hf_cnn_ft.strategies.co_tuning import CoTuning
from hf_cnn_ft.strategies.ema import WeightAverage
from hf_cnn_ft.strategies.param_groups import adapter_parameter_groups, parameter_groups
from hf_cnn_ft.strategies.semi_supervised import distillation_loss
from hf_cnn_ft.strategies.unfreezing import UnfreezeCallback, restarting_schedule


class NamedProgress(ProgressCallback):
    """The Trainer's progress bars, with each evaluation pass saying what it reads ("validation images"), not
    an unlabelled bar."""

    def __init__(self) -> None:
        super().__init__()
        self.description = "validation images"  # what the evaluation during training reads

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.prediction_bar is None and state.is_world_process_zero and has_length(eval_dataloader):
            leave = self.training_bar is None
            self.prediction_bar = tqdm(
                total=len(eval_dataloader), desc=self.description, leave=leave, dynamic_ncols=True
            )
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)


@contextmanager
def progress_named(trainer: Trainer, description: str) -> Iterator[None]:
    """Names the progress bar of the prediction passes run inside (trainer.predict on a split)."""
    bars = [c for c in trainer.callback_handler.callbacks if isinstance(c, NamedProgress)]
    for bar in bars:
        bar.description, before = description, bar.description
    try:
        yield
    finally:
        for bar in bars:
            bar.description = before


class FineTuneTrainer(Trainer):
    """`Trainer` with per-stage learning rates, class-weighted loss, L2-SP, MixUp/CutMix, a class-balanced
    sampler, and a training loader that drops the last, incomplete batch.

    A BatchNorm layer cannot train on a batch of one image (and a tiny last batch gives a noisy
    step), so, like timm's train.py, training skips the remainder; evaluation never drops images.
    """

    def __init__(
        self,
        *args,
        loss_weights: torch.Tensor | None = None,
        backbone_lr_multiplier: float = 1.0,
        lr_decay: float = 1.0,
        sample_weights: torch.Tensor | None = None,
        l2sp_alpha: float = 0.0,
        batch_mixer: Callable | None = None,
        unfreeze: UnfreezeCallback | None = None,
        lr_restart: bool = True,
        weight_average: WeightAverage | None = None,
        teacher: nn.Module | None = None,
        distillation: tuple[float, float] = (0.5, 1.0),
        co_tuning: CoTuning | None = None,
        multi_label: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.multi_label = multi_label
        if self.pop_callback(ProgressCallback) is not None:  # present unless training.disable_tqdm
            self.add_callback(NamedProgress())
        # Signal beyond the labels (signal section): a teacher's soft labels on the same (mixed) images, and the
        # pretrained head's loss towards the class relationship.
        self.teacher = teacher.to(self.args.device) if teacher is not None else None
        self.distill_weight, self.distill_temperature = distillation
        self.co_tuning = co_tuning.to(self.args.device) if co_tuning is not None else None
        if self.co_tuning is not None:
            self.co_tuning.attach(self.model)
        self.unfreeze, self.lr_restart, self.weight_average = unfreeze, lr_restart, weight_average
        for callback in (unfreeze, weight_average):
            if callback is not None:
                self.add_callback(callback)
        self.loss_weights = loss_weights
        self.backbone_lr_multiplier = backbone_lr_multiplier
        self.lr_decay = lr_decay
        self.sample_weights = sample_weights
        self.l2sp_alpha = l2sp_alpha
        self.batch_mixer = batch_mixer
        # The starting point L2-SP pulls towards: the pretrained backbone, captured before any
        # checkpoint is loaded, so a resumed run keeps the same anchor. The new head is not anchored.
        self.l2sp_anchor = {}
        if l2sp_alpha > 0:
            head = set(stages(self.model)["head"])
            self.l2sp_anchor = {
                n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad and n not in head
            }

    def l2sp_penalty(self) -> torch.Tensor:
        """alpha/2 * squared distance of the trainable backbone weights from the pretrained ones."""
        named = dict(self.model.named_parameters())
        total = sum(((named[n] - anchor.to(named[n].device)) ** 2).sum() for n, anchor in self.l2sp_anchor.items())
        return 0.5 * self.l2sp_alpha * total

    def _get_train_sampler(self, train_dataset=None):
        if self.sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        # Seeded identically on every process, so DDP shards one shared sequence of draws.
        generator = torch.Generator().manual_seed(self.args.seed)
        return WeightedRandomSampler(
            self.sample_weights, len(self.sample_weights), replacement=True, generator=generator
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """One parameter group per stage and decay kind: per-stage learning rates, no decay on BN/biases."""
        if self.optimizer is None:
            model = self.model if model is None else model
            if isinstance(model, PeftModel):
                groups = adapter_parameter_groups(model, self.args.learning_rate, self.args.weight_decay)
            else:
                groups = parameter_groups(
                    model,
                    self.args.learning_rate,
                    self.args.weight_decay,
                    self.backbone_lr_multiplier,
                    self.lr_decay,
                    include_frozen=self.unfreeze is not None,
                )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """With gradual unfreezing, the schedule restarts (warmup, then decay) at every unfreezing epoch."""
        restart = self.unfreeze is not None and self.unfreeze.plan.changes and self.lr_restart
        shape = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        if self.lr_scheduler is None and restart and shape in ("cosine", "linear"):
            steps_per_epoch = num_training_steps / max(1.0, self.args.num_train_epochs)
            boundaries = [round(epoch * steps_per_epoch) for epoch in self.unfreeze.plan.changes]
            self.lr_scheduler = restarting_schedule(
                optimizer or self.optimizer, num_training_steps, boundaries, self.args.get_warmup_steps, shape
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def evaluate(self, *args, **kwargs):
        """With a weight average, validation (and so best-model selection) judges the averaged weights."""
        if self.weight_average is None:
            return super().evaluate(*args, **kwargs)
        with self.weight_average.swapped_in(self.model):
            return super().evaluate(*args, **kwargs)

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.unfreeze is not None:
            # Scheduled-frozen parameters under DDP (see unfreezing.py): synced, but never updated.
            for parameter in self.unfreeze.masked_parameters:
                parameter.grad = None
        return loss

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        mixing = self.batch_mixer is not None and model.training
        if mixing:
            # Mixed in training only, right before the forward pass: evaluation always sees clean images.
            inputs["pixel_values"], inputs["labels"] = self.batch_mixer(inputs["pixel_values"], inputs["labels"])
        labels, pixels = inputs.get("labels"), inputs["pixel_values"]
        if self.loss_weights is None and not mixing and not self.multi_label:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        else:
            # Class weights, soft (mixed) targets or several labels: the loss computed here rather than by the model.
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = self.supervised_loss(outputs.logits, labels)
        if self.l2sp_anchor and model.training:
            loss = loss + self.l2sp_penalty()
        if self.teacher is not None and model.training:
            kd = distillation_loss(outputs.logits, self.teacher(pixels), self.distill_temperature)
            loss = (1 - self.distill_weight) * loss + self.distill_weight * kd
        if self.co_tuning is not None and model.training:
            loss = loss + self.co_tuning.loss(labels)
        return (loss, outputs) if return_outputs else loss

    def supervised_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the classes (class-weighted, smoothed as the recipe says), or for several labels per
        image one binary cross-entropy per label, in float32, its positives weighted per label and its targets
        smoothed towards 1/2 (a label of 1 trains towards 1 - s/2, a label of 0 towards s/2)."""
        if self.multi_label:
            weights = None if self.loss_weights is None else self.loss_weights.to(logits.device, torch.float32)
            smoothing = self.args.label_smoothing_factor
            targets = labels.float() * (1 - smoothing) + smoothing / 2
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weights)
        weights = None if self.loss_weights is None else self.loss_weights.to(logits.device, logits.dtype)
        return nn.functional.cross_entropy(
            logits, labels, weight=weights, label_smoothing=self.args.label_smoothing_factor
        )

    def get_train_dataloader(self) -> DataLoader:
        if isinstance(self.train_dataset, StreamingImages):
            return self._stream_loader()
        per_step = self._train_batch_size * max(1, self.args.world_size)
        drop_remainder = self.train_dataset is not None and len(self.train_dataset) >= per_step
        configured = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = configured or drop_remainder
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = configured

    def _stream_loader(self) -> DataLoader:
        """Each process already reads its own share of the stream (StreamingImages splits it by node): the loader
        is only put on the device, where `accelerator.prepare` would shard the stream a second time."""
        args = self.args
        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor,
        )
        return prepare_data_loader(loader, args.device, num_processes=1, process_index=0, put_on_device=True)
