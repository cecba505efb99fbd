"""The model card's findings about a finished run: what its report found, and how its recipe was found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hf_cnn_ft.config.paths import EXPORT_REPORT

# Pictures made of the dataset's own images: pushed only when the recipe or the user says so (hub.push_images).
DATASET_PICTURES = ("top_losses.png", "correct_examples.png")
REPORT_PICTURES = {
    "top_losses.png": "the most confidently wrong images, each beside its Grad-CAM heat map",
    "correct_examples.png": "the most confident correct images of each class, with Grad-CAM",
    "reliability.png": "reliability diagram",
}


def _calibration_text(calibration: dict[str, Any]) -> str:
    if calibration.get("ece_scaled") is None:
        return f"Expected calibration error (15 bins): {calibration['ece']:.4f}; no temperature was fitted."
    return (
        f"The probabilities are temperature-scaled (T = {calibration['temperature']:.3f}, fitted on the validation "
        "split and folded into the classification layer, so `pipeline`, timm, ONNX and `predict` all give the "
        f"calibrated ones). Expected calibration error (15 bins): {calibration['ece']:.4f} as trained, "
        f"{calibration['ece_scaled']:.4f} scaled."
    )


SCORE_NAMES = {
    "msp": "top probability",
    "energy": "energy score (logsumexp of the logits)",
    "mahalanobis": "familiarity (minus the Mahalanobis distance of its features to the nearest training class)",
}


def label_set_text(label_thresholds: dict[str, Any] | None) -> str:
    """A multi-label card's paragraph on how labels are decided and what its figures mean; '' otherwise."""
    if not label_thresholds:
        return ""
    limits = ", ".join(f"`{name}` {t:.2f}" for name, t in label_thresholds["thresholds"].items())
    return (
        "Several labels per image: each label has its own sigmoid probability and its own threshold, fitted on the "
        f"validation split for that label's best F1 ({limits}; kept in config.json as `label_thresholds`). "
        "`accuracy` counts an image right only when all of its labels are; `map` is the mean over labels of the "
        "average precision, which no threshold affects; `hamming_loss` is the share of wrong (image, label) "
        "decisions. transformers' pipeline gives each label's probability (`top_k=None` for all of them); the "
        "labels an image has are those at or above their threshold, as `hf-cnn-ft predict` answers.\n"
    )


def rejection_text(rejection: dict[str, Any] | None, multi_label: bool = False) -> str:
    """The card's sentence on the "unknown" answer: the threshold the run fitted, or that there is none."""
    if multi_label:
        return "An image for which no label reaches its threshold gets no label."
    if not rejection or not rejection.get("fitted"):
        why = f" (no threshold was fitted: {rejection['reason']})" if rejection else ""
        return f"The model answers one of its classes for every image, even one unlike all of them{why}."
    features = rejection["score"] == "mahalanobis"
    who = "`hf-cnn-ft predict` and its demo page" + ("" if features else " and its exports")
    kept = "config.json (`unknown_rejection`)" + (" and familiarity.safetensors" if features else "")
    return (
        f"An image unlike every class gets the answer `unknown` from {who}: below a {SCORE_NAMES[rejection['score']]} "
        f"of {rejection['threshold']:.4g}, a threshold fitted on the validation split to turn away "
        f"{rejection['rate']:.0%} of the images the model classifies correctly ({rejection['validation_rejected']:.1%} "
        f"did). It is kept in {kept}; transformers' pipeline and timm ignore it and always answer a class. "
        "`hf-cnn-ft evaluate MODEL --unknown IMAGES` measures it on images of other classes."
    )


def _slices_text(slices: dict[str, Any] | None) -> str:
    if not slices:
        return ""
    rows = [
        f"| {name} | {v['num_samples']} | {v['accuracy']:.3f} | {v['f1_macro']:.3f} |"
        for name, v in slices["per_slice"].items()
    ]
    return (
        "\n| slice | images | accuracy | macro-F1 |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Worst slice: `{slices['worst']}`, {slices['gap']:.3f} below the overall accuracy "
        f"({slices['overall_accuracy']:.3f}).\n"
    )


def report_text(report: dict[str, Any] | None) -> str:
    """The report's findings: most confused pairs, calibration, slices, and its pictures."""
    if not report:
        return ""
    if report.get("multi_label"):
        return _label_set_report_text(report)
    pairs = "\n".join(
        f"| {p['true']} | {p['predicted']} | {p['count']} | {p['rate']:.2f} |" for p in report["most_confused"][:8]
    )
    confused = (
        f"| true | predicted as | images | share of the true class |\n|---|---|---|---|\n{pairs}\n" if pairs else ""
    )
    pictures = "\n".join(
        f"![{REPORT_PICTURES[name]}]({name})\n" for name in report["pictures"] if name in REPORT_PICTURES
    )
    return f"""## What the model gets wrong

On the {report["split"]} split ({report["num_samples"]} images; `report.json` lists every image's loss).
{_calibration_text(report["calibration"])}

{confused}{_slices_text(report.get("slices"))}
{pictures}"""


def _label_set_report_text(report: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {e['label']} | {'missed' if e['has_label'] else 'wrongly given'} | {e['probability']:.2f} "
        f"| {e['loss']:.2f} |"
        for e in report["top_losses"][:12]
    )
    table = f"| label | decision | probability | loss |\n|---|---|---|---|\n{rows}\n" if rows else ""
    pictures = "\n".join(f"![{REPORT_PICTURES[n]}]({n})\n" for n in report["pictures"] if n in REPORT_PICTURES)
    return f"""## What the model gets wrong

On the {report["split"]} split ({report["num_samples"]} images; `report.json` lists every image's labels, decided
labels and loss). Each label's most confidently wrong decisions:

{table}
{pictures}"""


def search_text(search: dict[str, Any] | None) -> str:
    """How `hf-cnn-ft tune` found the recipe: the study, the space, the best trial and the search's pictures."""
    if not search:
        return ""
    ended = ", ".join(f"{count} {state}" for state, count in search["trials"].items())
    space = "\n".join(
        f"| `{key}` | {described} | `{search['best_values'].get(key)}` |" for key, described in search["space"].items()
    )
    pictures = "\n".join(f"![{what}]({name})\n" for name, what in search["pictures"].items())
    return f"""## How this recipe was found

`hf-cnn-ft tune` searched the space below with Optuna (TPE sampling, pruning on per-epoch validation scores):
{ended} trials, {search["search_seconds"]:.0f} s of trials in all (study `{search["study"]}` in `{search["storage"]}`).
Every trial was judged on the validation split; the test split was not read during the search. The best,
trial {search["best_trial"]} (validation {search["metric"]} {search["best_validation"]:.4f}), was trained again from
`best_recipe.yaml` and evaluated once on the test split: the results above.

| setting | searched over | chosen |
|---|---|---|
{space}

{pictures}"""


def exports_in(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, export report) of every export saved inside a run's folder (`hf-cnn-ft export`)."""
    reports = sorted(directory.glob(f"*/{EXPORT_REPORT}"))
    return [(path.parent.name, json.loads(path.read_text())) for path in reports]


def _size(files: dict[str, int], stem: str) -> str:
    """The size of one model: its files of that stem together (OpenVINO's .xml and .bin)."""
    total = sum(size for name, size in files.items() if name.rsplit(".", 1)[0] == stem)
    return f"{total / 1e6:.1f} MB"


def _export_rows(folder: str, report: dict[str, Any]) -> list[str]:
    accuracy, files = report.get("validation_accuracy") or {}, report["files"]
    model_file = next(name for name in files if name.rsplit(".", 1)[0] == "model" and name.endswith(report["suffix"]))
    checked = (
        f"{report['max_abs_logit_difference']:.1e}; top class agrees on {report['top_class_agreement']:.0%} "
        f"of {report['checked_images']} images"
    )
    torch_accuracy = f" (PyTorch {accuracy['torch']:.4f})" if "torch" in accuracy else ""
    rows = [
        f"| `{folder}/{model_file}` | {report['format']} | float32 | {_size(files, 'model')} | {checked} | "
        f"{accuracy['export']:.4f}{torch_accuracy} |"
        if "export" in accuracy
        else f"| `{folder}/{model_file}` | {report['format']} | float32 | {_size(files, 'model')} | {checked} | – |"
    ]
    if report.get("int8"):
        measured = f"{accuracy['int8']:.4f} ({-report['int8_drop_points']:+.2f} points)" if "int8" in accuracy else "–"
        rows.append(
            f"| `{folder}/{report['int8']}` | {report['format']} | int8 | {_size(files, 'model.int8')} | "
            f"calibrated on training images | {measured} |"
        )
    return rows


def exports_text(exports: list[tuple[str, dict[str, Any]]]) -> str:
    """The card's list of exports: each model file with its size, its check against PyTorch and its accuracy."""
    if not exports:
        return ""
    rows = [row for folder, report in exports for row in _export_rows(folder, report)]
    validation = max((report.get("validation_images") or 0 for _, report in exports), default=0)
    return (
        "## Exports\n\nChecked against the PyTorch model when written (`hf-cnn-ft export`): the largest logit "
        f"difference on held images, and accuracy on the validation split ({validation} images). Run one with "
        "its runtime: `hf-cnn-ft predict FOLDER/FILE images/`.\n\n"
        "| file | format | precision | size | check against PyTorch | validation accuracy |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
