"""WiSE-FT (Wortsman et al. 2022): the fine-tuned weights interpolated towards the linear-probed start.

Fine-tuning a whole network on a few hundred images moves it far from the pretrained features, and
the probed start and the fine-tuned end make different mistakes; a point on the straight line between
the two often beats both. `finetune.wise_alpha` sets that point: 0 is the probed start, 1 the
fine-tuned end, `auto` picks the best of a few on the validation split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hf_cnn_ft.errors import UserError

logger = logging.getLogger(__name__)

START_FILE = "probed_start.safetensors"
AUTO_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter and buffer."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def save_start(start: dict[str, torch.Tensor], output_dir: Path) -> None:
    """Kept in the output directory while training runs, so that a resumed run interpolates towards the
    same start (its probe is not run again)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in start.items()}, str(output_dir / START_FILE))


def load_start(checkpoint: Path, output_dir: Path) -> dict[str, torch.Tensor]:
    """The probed start of a resumed run: the copy in its checkpoint, else the one in its run folder (checkpoints
    written before they carried it)."""
    for path in (checkpoint / START_FILE, output_dir / START_FILE):
        if path.is_file():
            return load_file(str(path))
    raise UserError(
        f"{checkpoint} holds no {START_FILE} (the probed model, which the end of the run compares with), so this "
        "run cannot be resumed: start it again without --resume"
    )


def interpolate(model: nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> None:
    """Loads (1 - alpha) * start + alpha * end into `model`. Counters (BatchNorm's num_batches_tracked) keep
    the end's value."""
    mixed = {
        name: torch.lerp(start[name].to(tensor.dtype), tensor, alpha) if tensor.is_floating_point() else tensor
        for name, tensor in end.items()
    }
    model.load_state_dict(mixed)


def choose_alpha(
    model: nn.Module, start: dict[str, torch.Tensor], validation_score: Callable[[], float], greater_is_better: bool
) -> tuple[float, dict[float, float]]:
    """Tries every alpha of AUTO_ALPHAS, leaves `model` at the best one and returns it with all the scores.
    Ties go to the alpha nearest 0.5, the middle of the path."""
    end = snapshot(model)
    scores = {}
    for alpha in AUTO_ALPHAS:
        interpolate(model, start, end, alpha)
        scores[alpha] = validation_score()
    pick = max if greater_is_better else min
    best = pick(sorted(AUTO_ALPHAS, key=lambda alpha: abs(alpha - 0.5)), key=scores.__getitem__)
    interpolate(model, start, end, best)
    return best, scores


def apply_wise(
    model: nn.Module,
    start: dict[str, torch.Tensor],
    alpha: float | str,
    validation_score: Callable[[], float],
    metric: str,
    greater_is_better: bool,
) -> dict[str, object]:
    """Moves `model` (the fine-tuned end) to the recipe's point between `start` and itself; returns what
    metrics.json records. `validation_score` gives `metric` on the validation split for the weights as
    they are."""
    if alpha == "auto":
        chosen, scores = choose_alpha(model, start, validation_score, greater_is_better)
        logger.info("wise_alpha auto: validation %s %s, chose %g", metric, scores, chosen)
        return {"alpha": chosen, "chosen_by": metric, "validation": {str(a): s for a, s in scores.items()}}
    interpolate(model, start, snapshot(model), float(alpha))
    return {"alpha": float(alpha)}


def keep_the_better(
    model: nn.Module,
    start: dict[str, torch.Tensor],
    validate: Callable[[], tuple[float, np.ndarray]],
    metric: str,
    greater_is_better: bool,
) -> dict[str, float | str]:
    """The probed start as a candidate of the end: leaves in `model` the fine-tuned weights only if they score
    better than the probed start on validation by more than the noise of the comparison, and says which it kept.

    `validate` gives the metric and the correctness of each validation decision (an image's class, or of a
    multi-label model each of its labels). The noise is the standard error of the paired per-decision difference
    in correctness: on a validation split of a few dozen images a 2-point gain is
    one or two images, which a different split would as likely reverse (benchmarks/RESULTS.md, issue 19); the
    probed model, the simpler one, is kept unless the fine-tuned one is clearly better.
    """
    fine_tuned, tuned_correct = validate()
    end = snapshot(model)
    model.load_state_dict(start)
    probe, probe_correct = validate()
    difference = tuned_correct.astype(float) - probe_correct.astype(float)
    gain = float(difference.mean()) if len(difference) else 0.0
    error = float(difference.std(ddof=1) / math.sqrt(len(difference))) if len(difference) > 1 else 0.0
    if math.isnan(fine_tuned):
        keep_tuned = math.isnan(probe)
    else:
        scores_better = fine_tuned > probe if greater_is_better else fine_tuned < probe
        keep_tuned = scores_better and gain > error
    if not keep_tuned:
        model.load_state_dict(start)
        logger.warning(
            "fine-tuning did not clearly beat the linear probe on validation (%s %.4f vs %.4f; accuracy %+.4f ± "
            "%.4f over %d decisions): keeping the probed model (finetune.probe_candidate: false keeps the fine-tuned "
            "one)",
            metric,
            fine_tuned,
            probe,
            gain,
            error,
            len(difference),
        )
    else:
        model.load_state_dict(end)
    return {
        "metric": metric,
        "probe": probe,
        "fine_tuned": fine_tuned,
        "accuracy_gain": gain,
        "accuracy_gain_standard_error": error,
        "kept": "fine_tuned" if keep_tuned else "probe",
    }
