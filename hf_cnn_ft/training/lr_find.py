"""The learning-rate range test (Smith 2017; fastai's `lr_find`), for the phase the Trainer runs.

The learning rate grows exponentially from `start_lr` to `end_lr` over `steps` mini-batches while
the (smoothed) training loss is recorded; the suggestion is the rate where the loss falls fastest.
The test runs on the run's own Trainer (`build_trainer`): the model prepared as `train` prepares it
(probe, freezing or the first unfreezing step, adapters), its optimizer with its per-stage parameter
groups, its sampler, class weights, MixUp/CutMix and L2-SP; a callback only sets the rate before each
step. The model is then thrown away: nothing is written but the plot and the numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import TrainerCallback, set_seed

from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.data.dataset import split_labels
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.plots import pyplot
from hf_cnn_ft.models.precision import flush_denormals_on_cpu
from hf_cnn_ft.training.prepare import prepare_model
from hf_cnn_ft.training.train import build_trainer


@dataclass
class RangeTest:
    learning_rates: list[float]
    losses: list[float]
    suggestion: float
    plot: Path


class LearningRateSweep(TrainerCallback):
    """Sets every parameter group's rate to `rate x its own scale` before each step, the rate growing
    exponentially, and records the training loss; stops once the loss diverges.

    The Trainer runs at learning_rate 1 with a constant schedule, so each group's rate is its scale
    (the per-stage multipliers of the recipe) and the sweep keeps their ratios.
    """

    def __init__(self, start_lr: float, end_lr: float, steps: int) -> None:
        self.start_lr, self.factor = start_lr, (end_lr / start_lr) ** (1 / (steps - 1))
        self.scales: list[float] | None = None
        self.learning_rates: list[float] = []
        self.losses: list[float] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.scales is None:
            self.scales = [group["lr"] for group in optimizer.param_groups]
        rate = self.start_lr * self.factor ** len(self.learning_rates)
        for group, scale in zip(optimizer.param_groups, self.scales):
            group["lr"] = rate * scale
        self.learning_rates.append(rate)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.losses.append(float(logs["loss"]))
        curve = smoothed(self.losses)
        if not math.isfinite(self.losses[-1]) or curve[-1] > 4 * min(curve):
            control.should_training_stop = True  # diverged: larger rates tell nothing more


def smoothed(losses: list[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction, as in fastai's recorder."""
    average, result = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        result.append(average / (1 - beta**step))
    return result


def steepest_descent(learning_rates: list[float], losses: list[float]) -> float:
    """The rate where the smoothed loss falls fastest per unit of log learning rate, before its minimum."""
    curve = np.asarray(smoothed(losses))
    end = int(np.argmin(curve)) + 1
    if end < 3:
        return learning_rates[max(0, end - 1)]
    slopes = np.gradient(curve[:end], np.log(np.asarray(learning_rates[:end])))
    return float(learning_rates[int(np.argmin(slopes))])


def find_learning_rate(
    recipe: Recipe,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    callbacks: list[TrainerCallback] | None = None,
) -> RangeTest:
    """Runs the range test for the phase `train` would run; `callbacks` join the Trainer's."""
    if not 0 < start_lr < end_lr or steps < 5:
        raise UserError("lr-find needs 0 < start_lr < end_lr and at least 5 steps")
    args = recipe.training
    flush_denormals_on_cpu()
    set_seed(args.seed)
    prepared = prepare_model(recipe, load_image_data(recipe.data))
    if len(split_labels(prepared.data.splits["train"])) < args.per_device_train_batch_size:
        raise UserError(
            "lr-find: the training split holds fewer images than one batch; lower per_device_train_batch_size"
        )
    sweep = LearningRateSweep(start_lr, end_lr, steps)
    with tempfile.TemporaryDirectory() as scratch:
        sweep_args = dataclasses.replace(
            args,
            output_dir=scratch,
            learning_rate=1.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_steps=steps,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="steps",
            logging_steps=1,
            load_best_model_at_end=False,
            report_to="none",
        )
        build_trainer(recipe, prepared, [sweep, *(callbacks or [])], sweep_args).train()
    rates, losses = sweep.learning_rates[: len(sweep.losses)], sweep.losses
    return _write_results(rates, losses, Path(args.output_dir))


def _write_results(learning_rates: list[float], losses: list[float], output_dir: Path) -> RangeTest:
    suggestion = steepest_descent(learning_rates, losses)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot = output_dir / "lr_find.png"
    _plot(learning_rates, losses, suggestion, plot)
    (output_dir / "lr_find.json").write_text(
        json.dumps(
            {"suggested_learning_rate": suggestion, "learning_rates": learning_rates, "losses": losses}, indent=2
        )
    )
    return RangeTest(learning_rates, losses, suggestion, plot)


def _plot(learning_rates: list[float], losses: list[float], suggestion: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(learning_rates, losses, alpha=0.3, label="loss")
    ax.plot(learning_rates, smoothed(losses), label="smoothed")
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head; backbone stages scaled as the recipe says)")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
