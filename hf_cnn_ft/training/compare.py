"""Comparing backbones on the user's own data: one recipe, several models, a leaderboard.

Every candidate is fine-tuned with the same recipe, data and splits (and the same seeds), then
ranked by test macro-F1. With `splits`, every candidate runs on the same resampled splits
(data.resplit) and the leaderboard gives each figure's 95% interval over them. A candidate that
fails is a row saying why; the others still run.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.data.sources import load_raw_dataset
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.intervals import mean_interval
from hf_cnn_ft.share.run_dir import load_run

logger = logging.getLogger(__name__)

INFERENCE_BATCH = 32
# The leaderboard's first score, by what the runs report: accuracy, or for label sets mean average precision
# (their subset accuracy is a different, much harsher number, and not what a reader takes "accuracy" to be).
HEADLINES = {"accuracy": "test accuracy", "map": "test mAP"}


def headline_metric(report: dict) -> str:
    return "map" if "map" in report else "accuracy"


@dataclass
class Candidate:
    model: str
    split_seeds: list[int] = field(default_factory=list)  # the split of each run (all 0 without resampling)
    metric: str = "accuracy"  # the headline score's key in the runs' reports (HEADLINES)
    scores: list[float] = field(default_factory=list)  # that score, one per run
    f1_macro: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    parameters: int | None = None
    images_per_second: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.scores)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(values: list[float], split_seeds: list[int], digits: int = 4) -> str:
    mean, std = _mean_std(values)
    if len(set(split_seeds)) > 1:
        interval = mean_interval(values, split_seeds)
        return f"{mean:.{digits}f} ± {std:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def inference_speed(model_dir: Path, batches: int = 3) -> tuple[int, float]:
    """(parameters, images/s) of the saved model in inference mode on this machine."""
    model, data_config = load_run(model_dir)
    model = model.eval()
    size = data_config.input_size
    pixels = torch.randn(INFERENCE_BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(pixel_values=pixels)  # warm-up
        started = time.perf_counter()
        for _ in range(batches):
            model(pixel_values=pixels)
        elapsed = time.perf_counter() - started
    return sum(p.numel() for p in model.parameters()), batches * INFERENCE_BATCH / elapsed


def compare_models(
    recipe: Recipe, models: list[str], seeds: list[int], output_dir: Path, splits: list[int] | None = None
) -> list[Candidate]:
    """Fine-tunes every model with `recipe` under every seed (on every resampled split), then writes the
    leaderboard."""
    from hf_cnn_ft.training.train import train

    if not models:
        raise UserError("compare needs at least one model: --models resnet50,convnext_tiny")
    load_raw_dataset(recipe.data)  # a missing dataset is the recipe's error, not every candidate's
    output_dir.mkdir(parents=True, exist_ok=True)
    candidates = []
    for name in models:
        candidate = Candidate(name)
        candidates.append(candidate)
        for split, seed in [(split, seed) for split in splits or [None] for seed in seeds]:
            run_dir = output_dir / _slug(name) / (f"seed{seed}" if split is None else f"split{split}-seed{seed}")
            resplit = {"resplit": True, "split_seed": split} if split is not None else {}
            run = recipe.replace(model=name, seed=seed, output_dir=str(run_dir), **resplit)
            logger.info("compare: %s, seed %d -> %s", name, seed, run_dir)
            try:
                result = train(run)
            except Exception as exc:  # one failing candidate must not stop the others
                candidate.error = (
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                )
                logger.warning("compare: %s failed: %s", name, candidate.error)
                break
            candidate.split_seeds.append(split or 0)
            candidate.metric = headline_metric(result.report)
            candidate.scores.append(result.report[candidate.metric])
            candidate.f1_macro.append(result.report["f1_macro"])
            candidate.train_seconds.append(result.train_seconds)
        if candidate.ok:
            candidate.parameters, candidate.images_per_second = inference_speed(run_dir)
    write_leaderboard(candidates, seeds, output_dir, splits)
    return candidates


def _slug(name: str) -> str:
    return name.replace("/", "--").replace(":", "-")


def ranked(candidates: list[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (not c.ok, -(statistics.fmean(c.f1_macro) if c.ok else 0.0)))


def write_leaderboard(
    candidates: list[Candidate], seeds: list[int], output_dir: Path, splits: list[int] | None = None
) -> None:
    rows = ranked(candidates)
    metric = next((c.metric for c in rows if c.ok), "accuracy")
    header = ["rank", "model", HEADLINES[metric], "test macro-F1", "parameters", "train s", "inference img/s", "status"]
    over = f"{len(seeds)} seed(s): {', '.join(map(str, seeds))}; mean ± std over seeds"
    if splits:
        over = f"{len(splits)} resampled splits x {len(seeds)} seed(s); mean ± std [95% interval over the splits]"
    lines = [
        f"# Leaderboard ({over})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    with (output_dir / "leaderboard.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["model", f"{metric}_mean", f"{metric}_std", "f1_macro_mean", "f1_macro_std", "parameters",
             "train_seconds_mean", "inference_images_per_second", "seeds", "status", "error"]
        )  # fmt: skip
        for position, c in enumerate(rows, 1):
            if c.ok:
                acc, f1, secs = _mean_std(c.scores), _mean_std(c.f1_macro), _mean_std(c.train_seconds)
                writer.writerow(
                    [c.model, f"{acc[0]:.4f}", f"{acc[1]:.4f}", f"{f1[0]:.4f}", f"{f1[1]:.4f}", c.parameters,
                     f"{secs[0]:.1f}", f"{c.images_per_second:.1f}", len(c.scores), "ok", ""]
                )  # fmt: skip
                lines.append(
                    f"| {position} | `{c.model}` | {_fmt(c.scores, c.split_seeds)} "
                    f"| {_fmt(c.f1_macro, c.split_seeds)} | {c.parameters:,} "
                    f"| {secs[0]:.0f} | {c.images_per_second:.0f} | ok |"
                )
            else:
                writer.writerow([c.model, "", "", "", "", "", "", "", 0, "failed", c.error or "no result"])
                lines.append(f"| - | `{c.model}` | - | - | - | - | - | failed: {c.error} |")
    (output_dir / "leaderboard.md").write_text("\n".join(lines) + "\n")
    _plot(rows, output_dir / "leaderboard.png", HEADLINES[metric])


def _plot(candidates: list[Candidate], path: Path, score_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [c for c in candidates if c.ok]
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    if done:
        largest = max(c.parameters for c in done)
        for c in done:
            seconds, score = statistics.fmean(c.train_seconds), statistics.fmean(c.scores)
            axis.scatter(seconds, score, s=40 + 900 * math.sqrt(c.parameters / largest), alpha=0.6)
            axis.annotate(c.model, (seconds, score), textcoords="offset points", xytext=(6, 6), fontsize=8)
    axis.set_xlabel("training time (s)")
    axis.set_ylabel(score_name)
    axis.set_title("Backbones on your data (point size: parameters)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
