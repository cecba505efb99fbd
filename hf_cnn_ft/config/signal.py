"""The recipe's `signal` section: what a run learns from besides its labelled images.

On a few hundred labelled images, a model fine-tuned on their labels alone sits at the level of a logistic
regression on frozen features. Three sources of signal beat it in the literature, and each is an option here:

- the user's unlabeled images (`data.unlabeled`): consistency between a weak and a strong view of each, with
  a confidence threshold (FixMatch, Sohn et al. 2020), class-adaptive thresholds (FlexMatch, Zhang et al. 2021),
  or self-training on the confident pseudo-labels;
- an ensemble of other pretrained backbones as a teacher, distilled into the one model the user deploys, the
  teacher seeing the very views the student sees (function matching, Beyer et al. 2022);
- the backbone's own pretrained classifier (Co-Tuning, You et al. 2020): how the target classes map onto its
  ImageNet classes is learnt on the training split, and the old head is trained towards that mapping beside
  the new one, which keeps the features from drifting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hf_cnn_ft.config.choices import UNLABELED_METHODS, StrategyPreset
from hf_cnn_ft.config.data_section import DataArguments
from hf_cnn_ft.config.paths import check_safe_weights, looks_like_local_path
from hf_cnn_ft.errors import UserError


@dataclass
class SignalArguments:
    """Training signal beyond the labels: unlabeled images, teacher backbones, the pretrained head."""

    unlabeled_method: Literal[UNLABELED_METHODS] = field(
        default="auto",
        metadata={
            "help": "How data.unlabeled is learnt from: fixmatch (a strong view is trained towards the confident "
            "prediction on the weak one), flexmatch (with a threshold per class that follows how well the class is "
            "learnt), pseudo_label (self-training: the probed model labels the confident images, then trains on "
            "them), none; auto: fixmatch when there are unlabeled images (with teachers, their soft labels)."
        },
    )
    confidence_threshold: float = field(
        default=0.95,
        metadata={"help": "An unlabeled image counts only where the prediction on its weak view is this sure."},
    )
    unlabeled_weight: float = field(
        default=1.0, metadata={"help": "Weight of the unlabeled images' loss beside the labelled one (lambda_u)."}
    )
    unlabeled_ratio: int = field(default=2, metadata={"help": "Unlabeled images per labelled one in a batch (mu)."})
    unlabeled_views: int = field(
        default=2, metadata={"help": "Strongly augmented views cached per unlabeled image for the probe."}
    )
    teachers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Other pretrained backbones (model directories, timm names or Hub ids) whose features, with the "
            "student's own, make an ensemble teacher fitted on the labelled images; the student (model.model) is "
            "trained towards its soft labels on the same views and is what the run saves."
        },
    )
    distill_weight: float = field(
        default=0.5,
        metadata={"help": "Share of the teacher's soft labels in the labelled images' loss (the rest: the labels)."},
    )
    distill_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the distillation."})
    co_tuning_weight: float = field(
        default=0.0,
        metadata={
            "help": "Co-Tuning: weight of the pretrained ImageNet head's loss towards the class relationship learnt on "
            "the training split (fine-tuning phase); 0 is off. Needs weights that carry their source head."
        },
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def check_signal(
    signal: SignalArguments, data: DataArguments, preset: StrategyPreset, adapters: bool, probe_stages: int
) -> None:
    """What the signal settings need from the rest of the recipe: something unlabeled to learn from, a probe phase
    to fit a teacher in, a fine-tuning phase for Co-Tuning, and teachers that exist."""
    has_pool = bool(data.unlabeled or data.labels_per_class)
    method = signal.unlabeled_method
    _require(
        has_pool or method in ("auto", "none"),
        f"signal.unlabeled_method: {method} learns from unlabeled images: set data.unlabeled (or labels_per_class)",
    )
    _require(
        not (has_pool or signal.teachers) or preset.probes,
        f"finetune.strategy: {preset.name} has no probe phase, where unlabeled images and teachers are learnt from: "
        "use two_phase, gradual or linear_probe",
    )
    _require(
        not (has_pool or signal.teachers) or not probe_stages,
        "finetune.probe_stages: the stage probe learns from the labels alone; unlabeled images and teachers work "
        "with the linear probe (probe_stages: 0)",
    )
    _require(
        not (has_pool and data.streaming),
        "data.unlabeled: a streamed training split does not combine with an unlabeled pool; drop data.streaming",
    )
    _require(
        not signal.co_tuning_weight or (preset.trains and not adapters),
        "signal.co_tuning_weight trains the pretrained head beside the new one while the whole network fine-tunes: "
        "use two_phase, gradual or full, without peft",
    )
    for teacher in signal.teachers or []:
        local = Path(teacher).expanduser()
        if looks_like_local_path(teacher):
            _require(
                local.is_dir(),
                f"signal.teachers: {teacher} is not a model directory: give a folder, timm name or Hub id",
            )
        if local.is_dir():
            check_safe_weights(local, "signal.teachers:")


def resolve_signal(signal: SignalArguments, data: DataArguments) -> None:
    """Settles `unlabeled_method: auto`: FixMatch when there are unlabeled images, none otherwise."""
    if signal.unlabeled_method == "auto":
        signal.unlabeled_method = "fixmatch" if data.unlabeled or data.labels_per_class else "none"
