"""The recipe's sections, each a dataclass: the one source of truth for every setting.

A recipe has the sections ``data`` (`config.data_section`), ``model``, ``augment``, ``finetune``, ``signal``
(training signal beyond the labels, `config.signal`), ``peft``, ``hub``, ``report``, ``tune`` (read by
`hf-cnn-ft tune` only, `config.search`) and ``training`` (transformers'
``TrainingArguments`` with defaults chosen for fine-tuning). Every key name is unique across
the sections, so a command-line override names it plainly (``--learning_rate 3e-4``) or with its section
(``--training.learning_rate 3e-4``). The CLI, the YAML files, the saved ``recipe.yaml`` and the model card
are all derived from these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hf_cnn_ft.config.choices import (
    AUTO_AUGMENT_POLICIES,
    BN_POLICIES,
    CROP_MODES,
    GLOBAL_POOLS,
    PEFT_METHODS,
    PUSH_STRATEGIES,
    REJECTION_SCORES,
    SAMPLERS,
    TEST_TIME_FLIPS,
    UNFREEZE_SCHEDULES,
)
from hf_cnn_ft.config.data_section import DataArguments
from hf_cnn_ft.config.search import TuneArguments
from hf_cnn_ft.config.signal import SignalArguments
from hf_cnn_ft.config.training_defaults import TrainingDefaults


@dataclass
class ModelArguments:
    """Which pretrained backbone to fine-tune."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "A timm architecture (resnet50, convnext_tiny, efficientnet_b0...), a timm Hub id "
            "(timm/resnet50.a1_in1k), a transformers Hub id (microsoft/resnet-50) or a local model directory."
        },
    )
    pretrained: bool = field(
        default=True,
        metadata={"help": "Start from pretrained weights; false builds the architecture randomly initialised."},
    )
    weights: str | None = field(
        default=None,
        metadata={"help": "A local .safetensors or PyTorch state-dict file to load into the backbone."},
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub model branch, tag or commit."})
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Training/eval resolution; unset uses the model's own input size, or 128 px (whole image at "
            "evaluation) for training images under 64 px; the run's recipe.yaml records the size used."
        },
    )
    crop_pct: float | None = field(
        default=None,
        metadata={"help": "Eval crop: resize to image_size / crop_pct, then crop; unset uses the model's."},
    )
    crop_mode: Literal[CROP_MODES] | None = field(
        default=None,
        metadata={
            "help": "center (keep the aspect ratio, crop the middle) or squash (resize both edges: keeps "
            "the whole of wide or tall images); unset uses the model's."
        },
    )
    drop_rate: float | None = field(
        default=None, metadata={"help": "Dropout before the classifier; unset keeps the model's own."}
    )
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "Stochastic depth (drop-path) rate, where the backbone has it."}
    )
    global_pool: Literal[GLOBAL_POOLS] | None = field(
        default=None,
        metadata={
            "help": "timm backbones: how the last feature map is pooled for the classifier: avg, max, avgmax (the "
            "mean of the two: a label shown in one corner of the image is not averaged away), or catavgmax (both, "
            "side by side); unset keeps the model's own (avg)."
        },
    )
    zero_init_head: bool = field(
        default=True,
        metadata={
            "help": "Start the new classifier at zero, so the first steps cannot push random gradients "
            "into the pretrained backbone."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from a Hub model repo."})
    channels_last: bool = field(
        default=True, metadata={"help": "NHWC memory layout: 1.8x faster CNN training on CPU (benchmarks/RESULTS.md)."}
    )


@dataclass
class FinetuneArguments:
    """How the pretrained network is adapted: strategy, frozen stages, BatchNorm, linear probe."""

    strategy: str = field(
        default="two_phase",
        metadata={
            "help": "full: train everything from the start; linear_probe: train only the new head, on cached "
            "frozen features; two_phase: linear probe, then fine-tune everything (LP-FT, Kumar et al. 2022); "
            "gradual: linear probe, then unfreeze one stage from the top per epoch with layer-wise learning-rate "
            "decay 0.7 (ULMFiT, Howard & Ruder 2018). Each piece can be overridden."
        },
    )
    freeze: str = field(
        default="none", metadata={"help": "Stages frozen while the Trainer runs: none, backbone, or the first N."}
    )
    bn: Literal[BN_POLICIES] = field(
        default="auto",
        metadata={
            "help": "BatchNorm: frozen (inference mode and fixed scale/shift everywhere, in training stages too: "
            "the Keras rule), frozen_in_frozen_stages, train, or auto: frozen for pretrained weights, train for a "
            "randomly initialised model."
        },
    )
    bn_adapt: bool = field(
        default=False,
        metadata={
            "help": "Re-estimate every BatchNorm layer's statistics on the training images before training "
            "(AdaBN, Li et al. 2016): a cheap fix for a domain gap between ImageNet and your images."
        },
    )
    unfreeze: Literal[UNFREEZE_SCHEDULES] | None = field(
        default=None,
        metadata={
            "help": "Gradual unfreezing while the Trainer runs: none; head_then_all (the frozen stages train from "
            "epoch unfreeze_epochs on, fastai's fine_tune); one_per_epochs (one more stage from the top every "
            "unfreeze_epochs epochs, ULMFiT); milestones (unfreeze_milestones). Unset: the strategy's choice."
        },
    )
    unfreeze_epochs: int = field(default=1, metadata={"help": "Epochs per unfreezing step (see unfreeze)."})
    unfreeze_milestones: dict[int, str] | None = field(
        default=None,
        metadata={"help": "{epoch: freeze}: from that epoch on, freeze that (backbone, N or none). Epoch 0 is freeze."},
    )
    lr_restart: bool = field(
        default=True,
        metadata={"help": "Warm the learning rate up again (then decay) whenever stages unfreeze."},
    )
    head_epochs: int = field(default=60, metadata={"help": "Linear-probe epochs over the cached features."})
    head_learning_rate: float = field(default=3e-3, metadata={"help": "Linear-probe learning rate (AdamW)."})
    head_weight_decay: float = field(default=1e-4, metadata={"help": "Linear-probe weight decay."})
    head_batch_size: int = field(default=64, metadata={"help": "Linear-probe batch size."})
    probe_stages: int = field(
        default=0,
        metadata={
            "help": "Also train the last N stages during the linear probe, on cached outputs of the stages before "
            "them (at head_learning_rate x backbone_lr_multiplier); 0: the head alone, on pooled features."
        },
    )
    feature_views: int = field(
        default=1, metadata={"help": "Cached views per training image: 1 unaugmented + (N-1) augmented."}
    )
    backbone_lr_multiplier: float = field(
        default=1.0, metadata={"help": "Backbone learning rate as a multiple of the head's (training.learning_rate)."}
    )
    lr_decay: float | None = field(
        default=None,
        metadata={
            "help": "Layer-wise decay: each stage further from the head trains at this multiple of the one above. "
            "Unset: 0.7 for strategy gradual, else 1."
        },
    )
    sampler: Literal[SAMPLERS] = field(
        default="random",
        metadata={"help": "random, or balanced: draw training images with probability 1 / (size of their class)."},
    )
    l2sp_alpha: float = field(
        default=0.0,
        metadata={
            "help": "L2-SP: penalise alpha/2 * |w - w_pretrained|^2 over the backbone (Li et al. 2018); 0 is off."
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Keep an exponential moving average of the weights (e.g. 0.999); validation and the final "
            "model use it. Unset: off."
        },
    )
    class_weights: str | dict[str, float] | None = field(
        default=None,
        metadata={"help": "Loss weight per class: auto (inverse class frequency, normalised) or {label: weight}."},
    )
    probe_candidate: bool = field(
        default=True,
        metadata={"help": "Keep the linear-probed model when fine-tuning ends below it on validation (reported)."},
    )
    wise_alpha: float | Literal["auto"] | None = field(
        default=None,
        metadata={
            "help": "WiSE-FT (Wortsman et al. 2022): the final weights are (1 - alpha) x the linear-probed start "
            "+ alpha x the fine-tuned end; a number in [0, 1], or auto: the best of 0, 0.25, 0.5, 0.75, 1 on the "
            "validation split (metric_for_best_model). For two_phase and gradual. Unset: off (the end)."
        },
    )


@dataclass
class AugmentArguments:
    """Training-time augmentation, and the flips averaged at test time. Evaluation resizes and centre-crops."""

    crop_scale: tuple[float, float] = field(
        default=(0.25, 1.0), metadata={"help": "Area range of RandomResizedCrop, as fractions of the image."}
    )
    hflip: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    vflip: float = field(default=0.0, metadata={"help": "Probability of a vertical flip (scans, aerial images)."})
    rotation: float = field(default=0.0, metadata={"help": "Maximum random rotation, in degrees."})
    color_jitter: float = field(
        default=0.0, metadata={"help": "Strength of brightness/contrast/saturation jitter (0 disables)."}
    )
    auto_augment: Literal[AUTO_AUGMENT_POLICIES] | None = field(
        default=None, metadata={"help": "randaugment or trivialaugment, applied after the crop and flips."}
    )
    randaugment_ops: int = field(default=2, metadata={"help": "RandAugment: operations per image."})
    randaugment_magnitude: int = field(default=9, metadata={"help": "RandAugment: magnitude (0-30)."})
    random_erasing: float = field(default=0.0, metadata={"help": "Probability of erasing a random rectangle."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "MixUp Beta(alpha, alpha) strength; 0 disables."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix Beta(alpha, alpha) strength; 0 disables."})
    mix_prob: float = field(
        default=1.0, metadata={"help": "Share of training batches mixed (MixUp or CutMix, one at random if both)."}
    )
    test_time_flips: Literal[TEST_TIME_FLIPS] = field(
        default="none",
        metadata={
            "help": "Test-time augmentation of the final evaluation, evaluate and predict: average the logits of each "
            "image and its horizontal, vertical or both flips (4 views). The saved weights are unchanged."
        },
    )


@dataclass
class PeftArguments:
    """Parameter-efficient fine-tuning with peft: a low-rank adapter on the convolutions instead of
    updating every weight. The head and the BatchNorm layers train and are saved with the adapter."""

    peft_method: Literal[PEFT_METHODS] | None = field(
        default=None, metadata={"help": "lora or loha (peft's conv-capable methods); unset trains the weights."}
    )
    lora_rank: int = field(default=8, metadata={"help": "Rank of the low-rank update."})
    lora_alpha: float = field(default=16.0, metadata={"help": "Scaling numerator: the update is scaled by alpha/rank."})
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the adapter's input (LoHa: module dropout)."}
    )
    target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names to adapt; unset: every dense Conv2d and every Linear but the classifier."},
    )


@dataclass
class HubArguments:
    """Pushing the fine-tuned model to the Hugging Face Hub. The token comes from HF_TOKEN or
    `hf auth login`, never from the recipe, so that no saved recipe can leak it."""

    repo_id: str | None = field(
        default=None, metadata={"help": "Push the model to this Hub repo (namespace/name); unset: no push."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo private (an existing repo keeps its own)."})
    branch: str | None = field(
        default=None, metadata={"help": "Push to this branch (created if missing); unset: main."}
    )
    commit_message: str | None = field(default=None, metadata={"help": "Message of the final commit."})
    push_strategy: Literal[PUSH_STRATEGIES] = field(
        default="end",
        metadata={
            "help": "end: push once, when training is done; every_save: also push the model at every checkpoint; "
            "best: also push whenever the validation metric improves."
        },
    )
    license: str = field(
        default="other",
        metadata={"help": "Licence id for the model card; the base weights' and the data's licences bound it."},
    )
    push_images: bool = field(
        default=False,
        metadata={
            "help": "Also push the dataset's own images: examples/ (the demo page's examples) and the report's "
            "picture grids. Off by default, as a dataset's licence may not allow passing its images on; "
            "`hf-cnn-ft push --images` does it for one push."
        },
    )


@dataclass
class ReportArguments:
    """What the run's report shows: the images it gets most wrong, with Grad-CAM, and calibration."""

    report_at_end: bool = field(
        default=True, metadata={"help": "Write the report (top losses, calibration, slices) when training ends."}
    )
    top_losses: int = field(default=12, metadata={"help": "How many of the most confidently wrong images to show."})
    correct_per_class: int = field(default=2, metadata={"help": "Correct examples shown per class."})
    example_images: int = field(
        default=8,
        metadata={"help": "Test images saved in examples/ for `hf-cnn-ft app` (pushed with the model; 0: none)."},
    )
    temperature_scaling: bool = field(
        default=True,
        metadata={"help": "Fit one temperature on the validation split so that probabilities mean what they say."},
    )
    rejection_rate: float | None = field(
        default=0.05,
        metadata={
            "help": "The 'none of these' answer: a threshold fitted on the validation split so that this share of "
            "its correctly classified images falls below it; `predict`, the app and exports answer unknown below "
            "it. null: always answer a class."
        },
    )
    rejection_score: Literal[REJECTION_SCORES] = field(
        default="mahalanobis",
        metadata={
            "help": "What the threshold applies to: mahalanobis (distance of the classifier's input features to the "
            "nearest training class; exports answer a class), energy (logsumexp of the logits), msp (the top "
            "probability), or auto (of msp and energy, the one that better tells right from wrong on validation)."
        },
    )


SECTIONS: dict[str, type] = {
    "data": DataArguments,
    "model": ModelArguments,
    "augment": AugmentArguments,
    "finetune": FinetuneArguments,
    "signal": SignalArguments,
    "peft": PeftArguments,
    "hub": HubArguments,
    "report": ReportArguments,
    "tune": TuneArguments,
    "training": TrainingDefaults,  # declared keys; any transformers TrainingArguments field is accepted too
}
