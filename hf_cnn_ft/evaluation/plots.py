"""The pictures a user looks at: the confusion matrix and the training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def pyplot():
    """matplotlib's pyplot on the Agg backend: pictures are files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(report: dict[str, Any], label_names: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix with the raw counts written in each cell."""
    plt = pyplot()
    counts = np.asarray(report["confusion_matrix"])
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    size = max(4.0, 0.55 * len(label_names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(label_names) <= 30:
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(title or f"accuracy {report['accuracy']:.3f}, macro-F1 {report['f1_macro']:.3f}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def epoch_history(log_history: list[dict[str, Any]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """(epoch, value) series of training loss, validation loss and the validation metric."""
    series: dict[str, list[tuple[float, float]]] = {"train_loss": [], "eval_loss": [], f"eval_{metric}": []}
    for entry in log_history:
        epoch = entry.get("epoch")
        if epoch is None:
            continue
        if "loss" in entry:
            series["train_loss"].append((epoch, entry["loss"]))
        for key in ("eval_loss", f"eval_{metric}"):
            if key in entry:
                series[key].append((epoch, entry[key]))
    return series


def plot_training_curves(log_history: list[dict[str, Any]], metric: str, path: Path, kept: str = "best") -> None:
    """Loss (train and validation) and the validation metric per epoch, side by side, with the epoch whose
    weights were kept marked: the `best` one (the Trainer's best checkpoint) or the `last` (the probe's)."""
    plt = pyplot()
    series = epoch_history(log_history, metric)
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("eval_loss", "validation")):
        if series[key]:
            xs, ys = zip(*series[key])
            loss_ax.plot(xs, ys, marker="o", label=label)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    if loss_ax.lines:
        loss_ax.legend()
    loss_ax.set_title("loss")
    points = series[f"eval_{metric}"]
    if points:
        xs, ys = zip(*points)
        metric_ax.plot(xs, ys, marker="o", color="tab:green")
        if kept == "last":
            chosen, label = len(ys) - 1, "kept (last epoch)"
        else:
            chosen, label = int(np.argmax(ys)) if not metric.endswith("loss") else int(np.argmin(ys)), "best"
        metric_ax.scatter([xs[chosen]], [ys[chosen]], s=120, facecolors="none", edgecolors="black", label=label)
        metric_ax.legend()
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel(metric)
    metric_ax.set_title(f"validation {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
