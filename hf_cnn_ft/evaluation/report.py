"""The text reports the command line prints: a split's results, and a run report's findings."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any], title: str) -> str:
    """A short, aligned results table: overall metrics, then F1 per class."""
    lines = [title]
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "top5_accuracy"):
        if key in report:
            lines.append(f"  {key:<16} {report[key]:.4f}")
    width = max(len(name) for name in report["per_class"])
    lines.append(f"  {'class':<{width}}  precision  recall     f1  support")
    for name, values in report["per_class"].items():
        lines.append(
            f"  {name:<{width}}  {values['precision']:9.3f}  {values['recall']:6.3f}  {values['f1']:5.3f}"
            f"  {values['support']:7d}"
        )
    return "\n".join(lines)


def format_run_report(report: dict[str, Any]) -> str:
    """Calibration, the most confused pairs and the worst slice of a report (`hf-cnn-ft report`)."""
    calibration = report["calibration"]
    ece = f"  expected calibration error {calibration['ece']:.4f}"
    if calibration["ece_scaled"] is not None:
        ece += f" -> {calibration['ece_scaled']:.4f} (T = {calibration['temperature']:.3f})"
    lines = [f"{report['split']} split, {report['num_samples']} images", ece]
    for pair in report["most_confused"][:5]:
        lines.append(f"  {pair['true']} -> {pair['predicted']}: {pair['count']} ({pair['rate']:.0%} of {pair['true']})")
    if report["slices"]:
        slices = report["slices"]
        lines.append(f"  worst slice {slices['worst']}: {slices['gap']:.3f} below the overall accuracy")
    return "\n".join(lines)
