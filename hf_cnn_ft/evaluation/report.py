"""The text reports the command line prints: a split's results, and a run report's findings."""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any], title: str) -> str:
    """A short, aligned results table: overall metrics, then F1 per class."""
    lines = [title]
    keys = ("accuracy", "map", "f1_macro", "f1_micro", "precision_macro", "recall_macro", "top5_accuracy")
    for key in (*keys, "hamming_loss"):
        if key in report:
            lines.append(f"  {key:<16} {report[key]:.4f}")
    width = max(len(name) for name in report["per_class"])
    per_label = "threshold" in next(iter(report["per_class"].values()))  # a multi-label report
    lines.append(f"  {'class':<{width}}  precision  recall     f1  support" + ("     AP  threshold" * per_label))
    for name, values in report["per_class"].items():
        ap = values.get("average_precision")
        more = f"  {'-' if ap is None else f'{ap:.3f}':>5}  {values['threshold']:9.2f}" if per_label else ""
        lines.append(
            f"  {name:<{width}}  {values['precision']:9.3f}  {values['recall']:6.3f}  {values['f1']:5.3f}"
            f"  {values['support']:7d}{more}"
        )
    if "unknown" in report:
        lines += format_open_set(report["unknown"])
    return "\n".join(lines)


def format_open_set(found: dict[str, Any]) -> list[str]:
    """`evaluate --unknown`'s lines: each score's AUROC, and what the model's threshold accepts and rejects."""
    aurocs = ", ".join(f"{name} {value:.3f}" for name, value in found["auroc"].items())
    lines = [f"  images of other classes: {found['unknown_images']} (AUROC against the known ones: {aurocs})"]
    if found["threshold"] is None:
        lines.append("  the model has no 'unknown' threshold: it answers a class for every one of them")
        return lines
    lines.append(
        f"  at its threshold ({found['score']} {found['threshold']:.4g}): {found['false_acceptance_rate']:.1%} of them "
        f"accepted as a class; {found['known_rejected']:.1%} of the known images answered unknown"
    )
    return lines


def format_run_report(report: dict[str, Any]) -> str:
    """Calibration, the most confused pairs and the worst slice of a report (`hf-cnn-ft report`); of a multi-label
    report, each label's worst decisions."""
    if report.get("multi_label"):
        lines = [f"{report['split']} split, {report['num_samples']} images; the most confidently wrong decisions:"]
        for e in report["top_losses"][:10]:
            what = "missed" if e["has_label"] else "wrongly given"
            lines.append(f"  image {e['index']}: {e['label']} {what} (probability {e['probability']:.2f})")
        return "\n".join(lines)
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
