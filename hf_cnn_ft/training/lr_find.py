"""The learning-rate range test (Smith 2017; fastai's `lr_find`), for the phase the Trainer runs.

The learning rate grows exponentially from `start_lr` to `end_lr` over `steps` mini-batches while
the (smoothed) training loss is recorded; the suggestion is the rate where the loss falls fastest.
The model is prepared exactly as `train` prepares it (probe, freezing, per-stage rates) and then
thrown away: nothing is written but the plot and the numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import default_data_collator, set_seed

from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.data.inputs import with_pixel_values
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.plots import pyplot
from hf_cnn_ft.strategies.freezing import parameter_groups
from hf_cnn_ft.training.train import prepare_model


@dataclass
class RangeTest:
    learning_rates: list[float]
    losses: list[float]
    suggestion: float
    plot: Path


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


def find_learning_rate(recipe: Recipe, steps: int = 100, start_lr: float = 1e-7, end_lr: float = 1.0) -> RangeTest:
    if not 0 < start_lr < end_lr or steps < 5:
        raise UserError("lr-find needs 0 < start_lr < end_lr and at least 5 steps")
    args, strategy = recipe.training, recipe.finetune
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # denormal floats cost 20-30x on some CPUs
    set_seed(args.seed)
    data = load_image_data(recipe.data)
    prepared = prepare_model(recipe, data)
    model, loss_weights = prepared.model, prepared.loss_weights

    groups = parameter_groups(model, 1.0, args.weight_decay, strategy.backbone_lr_multiplier, strategy.lr_decay)
    scales = [group["lr"] for group in groups]
    optimizer = torch.optim.AdamW(groups, lr=start_lr)
    loader = DataLoader(
        with_pixel_values(prepared.data.splits["train"], prepared.augmentation),
        collate_fn=default_data_collator,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,
    )
    loss_fn = torch.nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=args.label_smoothing_factor)
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    if len(loader) == 0:
        raise UserError(
            "lr-find: the training split holds fewer images than one batch; lower per_device_train_batch_size"
        )
    learning_rates, losses = [], []
    model.train()
    for step, batch in zip(range(steps), _endless(loader)):
        rate = start_lr * factor**step
        for group, scale in zip(optimizer.param_groups, scales):
            group["lr"] = rate * scale
        loss = loss_fn(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learning_rates.append(rate)
        losses.append(loss.item())
        curve = smoothed(losses)
        if not math.isfinite(losses[-1]) or curve[-1] > 4 * min(curve):
            break  # diverged: larger rates tell nothing more
    suggestion = steepest_descent(learning_rates, losses)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot = output_dir / "lr_find.png"
    _plot(learning_rates, losses, suggestion, plot)
    (output_dir / "lr_find.json").write_text(
        json.dumps(
            {"suggested_learning_rate": suggestion, "learning_rates": learning_rates, "losses": losses}, indent=2
        )
    )
    return RangeTest(learning_rates, losses, suggestion, plot)


def _endless(loader: DataLoader):
    while True:
        yield from loader


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
