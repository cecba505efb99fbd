"""The model card (README.md) written beside every fine-tuned model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .data import ImageData
from .models import DataConfig
from .recipe import Recipe, recipe_to_yaml


def _is_hub_id(value: str | None) -> bool:
    return bool(value) and value.count("/") == 1 and not value.startswith((".", "/", "~")) and not Path(value).exists()


def _metrics_table(report: dict[str, Any]) -> str:
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, values in report["per_class"].items():
        rows.append(
            f"| {name} | {values['precision']:.3f} | {values['recall']:.3f} | {values['f1']:.3f} "
            f"| {values['support']} |"
        )
    return "\n".join(rows)


def _counts_table(data: ImageData) -> str:
    splits = list(data.splits)
    rows = ["| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    counts = {split: data.class_counts(split) for split in splits}
    for name in data.label_names:
        rows.append(f"| {name} | " + " | ".join(str(counts[s][name]) for s in splits) + " |")
    return "\n".join(rows)


def _resize_text(config: DataConfig) -> str:
    if config.crop_mode == "squash":
        return f"both edges resized to {config.resize_size}, then centre crop"
    return f"shorter edge resized to {config.resize_size}, then centre crop"


def _strategy_text(recipe: Recipe, summary: dict[str, Any]) -> str:
    finetune = recipe.finetune
    probe = (
        f"a linear probe ({finetune.head_epochs} epochs of the new head on cached backbone features)"
        if finetune.strategy in ("linear_probe", "two_phase")
        else ""
    )
    tuned = f"{summary['epochs_trained']:g} epochs of fine-tuning with the Trainer"
    if finetune.strategy == "linear_probe":
        return f"Strategy `linear_probe`: {probe}; the backbone kept its pretrained weights."
    if finetune.strategy == "two_phase":
        return f"Strategy `two_phase`: {probe}, then {tuned}."
    return f"Strategy `full`: {tuned}."


def _imbalance_note(data: ImageData) -> str:
    counts = [c for c in data.class_counts("train").values() if c > 0]
    ratio = max(counts) / min(counts)
    if ratio < 2:
        return "The training classes are roughly balanced."
    return (
        f"The training classes are imbalanced (largest / smallest = {ratio:.1f}): judge the model by the "
        "per-class recall and macro-F1, not by accuracy alone."
    )


PICTURES = {
    "confusion_matrix.png": "confusion matrix",
    "training_curves.png": "training curves",
    "linear_probe_curves.png": "linear-probe curves",
}


def build_model_card(
    recipe: Recipe, data: ImageData, summary: dict[str, Any], data_config: DataConfig, pictures: list[str]
) -> ModelCard:
    evaluated_on = summary["evaluated_on"]
    report = summary[evaluated_on]
    base_model = recipe.model.model
    dataset = recipe.data.dataset
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["image-classification", "hf-cnn-ft", "cnn"],
        base_model=base_model if _is_hub_id(base_model) else None,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        metrics=["accuracy", "f1"],
    )
    overall = "\n".join(
        f"| {key} | {report[key]:.4f} |"
        for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_weighted", "top5_accuracy")
        if key in report
    )
    text = f"""---
{card_data.to_yaml()}
---

# Image classifier fine-tuned from `{base_model}`

Fine-tuned with hf-cnn-ft to sort images into {len(data.label_names)} classes:
{", ".join(f"`{name}`" for name in data.label_names)}.

## Training data

Source: `{dataset}`. Split sizes: {", ".join(f"{k} {v}" for k, v in summary["split_sizes"].items())}.
Unreadable images skipped: {summary["skipped_images"]}.

{_counts_table(data)}

## Training procedure

Input: {data_config.input_size} px ({_resize_text(data_config)}), {data_config.interpolation} interpolation,
mean {list(data_config.mean)}, std {list(data_config.std)}.
{_strategy_text(recipe, summary)} Training took {summary["train_seconds"]:.0f} s on {summary["hardware"]}.

The resolved recipe:

```yaml
{recipe_to_yaml(recipe).strip()}
```

## Results ({evaluated_on} split, {report["num_samples"]} images)

| metric | value |
|---|---|
{overall}

{_metrics_table(report)}

{chr(10).join(f"![{PICTURES.get(name, name)}]({name})" + chr(10) for name in pictures)}
## How to use

```python
from transformers import pipeline

classifier = pipeline("image-classification", model="PATH_OR_REPO_ID")
classifier("image.jpg")
```

## Limitations

{_imbalance_note(data)} The model only knows the classes above and was evaluated on
{report["num_samples"]} held-out images from the same source as its training data.
"""
    return ModelCard(text)


def write_model_card(
    path: Path, recipe: Recipe, data: ImageData, summary: dict[str, Any], data_config: DataConfig
) -> None:
    pictures = [name for name in PICTURES if (path.parent / name).is_file()]
    build_model_card(recipe, data, summary, data_config, pictures).save(path)
