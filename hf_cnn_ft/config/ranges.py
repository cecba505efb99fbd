"""The bounds of every numeric recipe key, by section: one table, read by the recipe checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


PROBABILITY = Interval(0, 1)
FRACTION = Interval(0, 1, open_high=True)
POSITIVE = Interval(0, open_low=True)
NON_NEGATIVE = Interval(0)
COUNT = Interval(1)

# Every numeric key with a bound, by section. A null value means "unset" and is not checked.
RANGES: dict[str, dict[str, Interval]] = {
    "data": {"validation_fraction": FRACTION, "test_fraction": FRACTION, "max_train_samples": COUNT,
             "max_eval_samples": COUNT, "preprocessing_num_workers": COUNT,
             "shuffle_buffer": COUNT, "labels_per_class": COUNT, "max_unlabeled_samples": COUNT,
             "folds": Interval(2), "fold": NON_NEGATIVE},
    "model": {"image_size": Interval(16), "crop_pct": Interval(0, 1, open_low=True), "drop_rate": FRACTION,
              "drop_path_rate": FRACTION},
    "augment": {"hflip": PROBABILITY, "vflip": PROBABILITY, "rotation": Interval(0, 180), "color_jitter": NON_NEGATIVE,
                "randaugment_ops": COUNT, "randaugment_magnitude": Interval(0, 30), "random_erasing": PROBABILITY,
                "mixup_alpha": NON_NEGATIVE, "cutmix_alpha": NON_NEGATIVE, "mix_prob": PROBABILITY},
    "finetune": {"unfreeze_epochs": COUNT, "head_epochs": NON_NEGATIVE, "head_learning_rate": POSITIVE,
                 "head_weight_decay": NON_NEGATIVE, "head_batch_size": COUNT, "feature_views": COUNT,
                 "probe_stages": NON_NEGATIVE, "backbone_lr_multiplier": NON_NEGATIVE, "l2sp_alpha": NON_NEGATIVE,
                 "lr_decay": Interval(0, 1, open_low=True), "ema_decay": Interval(0, 1, True, True)},
    "signal": {"confidence_threshold": PROBABILITY, "unlabeled_weight": NON_NEGATIVE, "unlabeled_ratio": COUNT,
               "unlabeled_views": COUNT, "distill_weight": PROBABILITY, "distill_temperature": POSITIVE,
               "co_tuning_weight": NON_NEGATIVE},
    "peft": {"lora_rank": COUNT, "lora_alpha": POSITIVE, "lora_dropout": FRACTION},
    "report": {"top_losses": NON_NEGATIVE, "correct_per_class": NON_NEGATIVE, "example_images": NON_NEGATIVE,
               "rejection_rate": Interval(0, 0.5, open_low=True)},
    "training": {"learning_rate": NON_NEGATIVE, "num_train_epochs": POSITIVE, "per_device_train_batch_size": COUNT,
                 "per_device_eval_batch_size": COUNT, "gradient_accumulation_steps": COUNT,
                 "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "warmup_ratio": PROBABILITY,
                 "max_grad_norm": NON_NEGATIVE, "label_smoothing_factor": FRACTION,
                 "dataloader_num_workers": NON_NEGATIVE, "early_stopping_patience": COUNT,
                 "early_stopping_threshold": NON_NEGATIVE, "save_total_limit": COUNT, "logging_steps": POSITIVE,
                 "eval_steps": POSITIVE, "save_steps": POSITIVE},
}  # fmt: skip
