"""The text report of a split's results, as the command line prints it."""

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
