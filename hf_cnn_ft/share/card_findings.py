"""The model card's findings about a finished run: what its report found, and how its recipe was found."""

from __future__ import annotations

from typing import Any

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
