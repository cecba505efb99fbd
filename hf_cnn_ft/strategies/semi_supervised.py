"""What the cached probe learns besides the labels: the unlabeled pool and a teacher's soft labels.

The probe trains the new head on cached features, so its semi-supervised learning is on cached features too:
each unlabeled image has a weak view (the evaluation transform) and `unlabeled_views` strong ones (the training
augmentation with RandAugment), computed once. Per labelled batch, `unlabeled_ratio` times as many unlabeled
images are drawn, one strong view each, and

- fixmatch: the strong view is trained towards the prediction on the weak one where that is at least
  `confidence_threshold` sure (Sohn et al. 2020);
- flexmatch: the threshold of each class is scaled by how many images the head already predicts it for
  confidently, so classes that are learnt late are not starved of pseudo-labels (Zhang et al. 2021);
- with a teacher, the strong view is trained towards the teacher's soft labels on that same view (function
  matching: no threshold), and the labelled loss mixes the labels with the teacher's soft labels.

pseudo_label (self-training) is not a per-step loss: the probed head labels the confident images once, and the
head trains again on the labelled and the pseudo-labelled views (`self_training_rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from hf_cnn_ft.config.signal import SignalArguments


@dataclass
class Pool:
    """Cached features of the unlabeled images: the weak view and the strong views (views x images x dims), and
    the teacher's logits on the strong views where there is a teacher."""

    weak: torch.Tensor
    strong: torch.Tensor
    teacher_strong: torch.Tensor | None = None


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at `temperature`, scaled by its square so the gradients keep their size."""
    target = F.softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(F.log_softmax(logits / temperature, dim=-1), target, reduction="batchmean") * temperature**2


class ProbeObjective:
    """The probe's loss for one labelled batch: the labels (mixed with a teacher's soft labels when there is one)
    plus the unlabeled pool's term. An epoch covers the labelled rows or the pool, whichever takes more steps."""

    def __init__(
        self,
        settings: SignalArguments,
        labels: torch.Tensor,
        classes: int,
        loss_weights: torch.Tensor | None,
        seed: int,
        pool: Pool | None = None,
        teacher_labelled: torch.Tensor | None = None,
    ) -> None:
        self.settings, self.labels, self.classes, self.pool = settings, labels, classes, pool
        self.teacher_labelled = teacher_labelled
        self.cross_entropy = nn.CrossEntropyLoss(weight=loss_weights)
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.thresholds = torch.full((classes,), settings.confidence_threshold)
        self.pseudo_labelled = 0.0  # share of unlabeled images over the threshold, last epoch

    @property
    def consistency(self) -> bool:
        """Whether the pool adds a per-step term (pseudo_label adds rows instead)."""
        return self.pool is not None and (
            self.teacher_labelled is not None or self.settings.unlabeled_method in ("fixmatch", "flexmatch")
        )

    def rows_per_epoch(self) -> int:
        if not self.consistency:
            return len(self.labels)
        return max(len(self.labels), math.ceil(self.pool.weak.shape[0] / self.settings.unlabeled_ratio))

    def epoch_begin(self, head: nn.Module) -> None:
        """FlexMatch's class-adaptive thresholds, from how confidently the head predicts the pool now."""
        if not self.consistency or self.teacher_labelled is not None:
            return
        with torch.no_grad():
            confidence, predicted = F.softmax(head(self.pool.weak), dim=-1).max(dim=-1)
        sure = confidence >= self.settings.confidence_threshold
        self.pseudo_labelled = float(sure.float().mean())
        if self.settings.unlabeled_method != "flexmatch":
            return
        learnt = torch.bincount(predicted[sure], minlength=self.classes).float()
        # Normalised by the best-learnt class, or by the images nobody is sure of yet while most are.
        scale = learnt / max(float(learnt.max()), float((~sure).sum()), 1.0)
        self.thresholds = self.settings.confidence_threshold * scale / (2 - scale)

    def __call__(self, head: nn.Module, logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        loss = self.cross_entropy(logits, self.labels[batch])
        if self.teacher_labelled is not None:
            kd = distillation_loss(logits, self.teacher_labelled[batch], self.settings.distill_temperature)
            loss = (1 - self.settings.distill_weight) * loss + self.settings.distill_weight * kd
        if self.consistency:
            loss = loss + self.settings.unlabeled_weight * self._unlabeled_term(head, len(batch))
        return loss

    def _unlabeled_term(self, head: nn.Module, labelled: int) -> torch.Tensor:
        pool = self.pool
        count = labelled * self.settings.unlabeled_ratio
        images = torch.randint(pool.weak.shape[0], (count,), generator=self.generator)
        views = torch.randint(pool.strong.shape[0], (count,), generator=self.generator)
        strong_logits = head(pool.strong[views, images])
        if pool.teacher_strong is not None:
            teacher = pool.teacher_strong[views, images]
            return distillation_loss(strong_logits, teacher, self.settings.distill_temperature)
        with torch.no_grad():
            confidence, pseudo = F.softmax(head(pool.weak[images]), dim=-1).max(dim=-1)
        mask = (confidence >= self.thresholds[pseudo]).float()
        return (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()


def self_training_rows(
    head: nn.Module, pool: Pool, threshold: float, class_shares: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The pool's weak and strong views whose weak prediction is at least `threshold` sure, with those predictions
    as labels (self-training on pseudo-labels), and the share of images that qualified.

    Class-balanced (Zou et al. 2018): a class takes at most its share of the labelled images times the pool, its
    surest first, so a head that is sure of one class everywhere cannot pseudo-label the pool into that class.
    """
    with torch.no_grad():
        confidence, predicted = F.softmax(head(pool.weak), dim=-1).max(dim=-1)
    chosen = []
    for label, share in enumerate(class_shares.tolist()):
        members = torch.nonzero((predicted == label) & (confidence >= threshold)).flatten()
        surest = members[confidence[members].argsort(descending=True)]
        chosen.append(surest[: math.ceil(share * len(predicted))])
    sure = torch.cat(chosen)
    rows = torch.cat([pool.weak[sure], *(view[sure] for view in pool.strong)])
    labels = predicted[sure].repeat(1 + pool.strong.shape[0])
    return rows, labels, len(sure) / len(predicted)
