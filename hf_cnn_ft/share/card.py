"""The model card (README.md) written beside every fine-tuned model and pushed with it to the Hub.

The card is rendered from the run's resolved recipe and its `metrics.json` summary alone, so
`hf-cnn-ft push` can render it again for the repo it pushes to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.config.writing import plain_value, recipe_to_yaml
from hf_cnn_ft.data.dataset import LABEL_SAMPLE
from hf_cnn_ft.share.card_findings import exports_text, label_set_text, rejection_text, report_text, search_text
from hf_cnn_ft.share.run_summary import RunSummary
from hf_cnn_ft.strategies.registry import get_strategy

PICTURES = {
    "confusion_matrix.png": "confusion matrix",
    "training_curves.png": "training curves",
    "linear_probe_curves.png": "linear-probe curves",
}
TOOL_URL = "https://github.com/hf-cnn-ft/hf-cnn-ft"


def is_hub_id(value: str | None) -> bool:
    return bool(value) and value.count("/") == 1 and not value.startswith((".", "/", "~")) and not Path(value).exists()


def _metrics_table(report: dict[str, Any]) -> str:
    per_label = "threshold" in next(iter(report["per_class"].values()), {})  # a multi-label report
    extra = " AP | threshold |" if per_label else ""
    rows = [f"| class | precision | recall | F1 | support |{extra}", "|---|---|---|---|---|" + "---|" * (2 * per_label)]
    for name, values in report["per_class"].items():
        ap = values.get("average_precision")
        more = f" {'-' if ap is None else f'{ap:.3f}'} | {values['threshold']:.2f} |" if per_label else ""
        rows.append(
            f"| {name} | {values['precision']:.3f} | {values['recall']:.3f} | {values['f1']:.3f} "
            f"| {values['support']} |{more}"
        )
    return "\n".join(rows)


def _counts_table(summary: RunSummary) -> str:
    counts, sizes = summary.class_counts, summary.split_sizes
    splits = list(counts)
    headers = [s if sizes.get(s) is not None else f"{s} (its first {LABEL_SAMPLE:,} streamed images)" for s in splits]
    rows = ["| class | " + " | ".join(headers) + " |", "|---|" + "---|" * len(splits)]
    for name in summary.label_names:
        rows.append(f"| {name} | " + " | ".join(str(counts[s].get(name, 0)) for s in splits) + " |")
    return "\n".join(rows)


def _preprocessing_text(preprocessing: dict[str, Any]) -> str:
    size = preprocessing["input_size"]
    resize = int(size / preprocessing["crop_pct"])
    how = "both edges" if preprocessing["crop_mode"] == "squash" else "shorter edge"
    return (
        f"{size} px ({how} resized to {resize}, then centre crop), {preprocessing['interpolation']} interpolation, "
        f"mean {list(preprocessing['mean'])}, std {list(preprocessing['std'])}"
    )


def _precision_text(precision: dict[str, Any] | None) -> str:
    if not precision:
        return ""
    names = {"fp32": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}
    return f", in {names.get(precision['precision'], precision['precision'])} ({precision['reason']})"


def _strategy_text(recipe: Recipe, summary: RunSummary) -> str:
    text = get_strategy(recipe.finetune.strategy).card_text(recipe, summary.epochs_trained)
    interpolation = summary.weight_interpolation
    if interpolation:
        how = f", chosen on the validation {interpolation['chosen_by']}" if "chosen_by" in interpolation else ""
        text += (
            f" The final weights lie at {interpolation['alpha']:g} of the way from the probed model to the "
            f"fine-tuned one (WiSE-FT{how})."
        )
    check = summary.probe_candidate
    if check and check["kept"] == "probe":
        text += (
            f" Fine-tuning ended below the linear probe on the validation split ({check['metric']} "
            f"{check['fine_tuned']:.3f} against {check['probe']:.3f}), so the probed model was kept."
        )
    return text


def _test_time_text(summary: RunSummary) -> str:
    plain = summary.without_test_time_augmentation
    if not plain:
        return ""
    flips = {"horizontal": "its horizontal flip", "vertical": "its vertical flip", "both": "its three flips"}
    per_class = ", ".join(f"{name} {values['f1']:.3f}" for name, values in plain["per_class"].items())
    return (
        f"\nThese figures use test-time augmentation: the logits of each image and {flips[summary.test_time_flips]} "
        "are averaged (`augment.test_time_flips`; `hf-cnn-ft evaluate` and `predict` do the same on the run "
        "directory, and anywhere with `--tta`). The model on its own, as `pipeline` or timm load it, scores "
        f"accuracy {plain['accuracy']:.4f} and macro-F1 "
        f"{plain['f1_macro']:.4f} (F1 per class: {per_class}).\n"
    )


def _hyperparameters_table(recipe: Recipe) -> str:
    """The settings of the phases the strategy ran: a probe-only run lists no fine-tuning settings."""
    t, f = recipe.training, recipe.finetune
    preset = get_strategy(f.strategy).preset
    rows: dict[str, str] = {}
    if preset.probes:
        rows |= {
            "probe": f"{f.head_epochs} epochs, learning rate {f.head_learning_rate:g}, weight decay "
            f"{f.head_weight_decay:g}, batch {f.head_batch_size}",
            "stages trained in the probe": str(f.probe_stages) if f.probe_stages else "none (the head only)",
        }
    if preset.trains:
        rows |= {
            "learning rate (head)": f"{t.learning_rate:g}",
            "backbone learning rate": f"{f.backbone_lr_multiplier:g}x head, layer decay {f.lr_decay:g}",
            "schedule": f"{plain_value(t.lr_scheduler_type)}, warmup {t.warmup_steps:g}",
            "epochs (max)": f"{t.num_train_epochs:g}",
            "batch size per device": str(t.per_device_train_batch_size),
            "optimizer": f"{plain_value(t.optim)}, weight decay {t.weight_decay:g}",
            "label smoothing": f"{t.label_smoothing_factor:g}",
            "frozen stages": f.freeze,
            "BatchNorm": f.bn,
            "sampler": f.sampler,
            "weight average (EMA)": f"decay {f.ema_decay:g}" if f.ema_decay else "off",
            "weight interpolation (WiSE-FT)": "off" if f.wise_alpha is None else str(f.wise_alpha),
        }
    rows |= {
        "class weights": str(f.class_weights),
        "test-time flips": recipe.augment.test_time_flips,
        "seed": str(t.seed),
    }
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())


def _hardware_text(summary: RunSummary) -> str:
    processes = "1 process" if summary.processes == 1 else f"{summary.processes} processes"
    return f"{summary.hardware} ({processes}){_precision_text(summary.precision)}"


def _model_name(source: str | None) -> str:
    """A Hub id as it is; a local folder or file by its name alone (the card must not carry local paths)."""
    if not source or is_hub_id(source):
        return source or "a CNN"
    return Path(source).name or source


def _duplicates_text(duplicates: dict[str, Any] | None) -> str:
    """What the byte-identical copies across splits did to the evaluation."""
    if not duplicates or not duplicates["across"]:
        return ""
    counts = ", ".join(f"{n} {split}" for split, n in duplicates["across"].items())
    done = "removed from those splits" if duplicates["removed"] else "kept, so those figures are optimistic"
    return f"\nImages byte-identical to an image of an earlier split: {counts}; {done}."


def _imbalance_note(summary: RunSummary) -> str:
    counts = [c for c in summary.class_counts["train"].values() if c > 0]
    ratio = max(counts) / min(counts)
    if ratio < 2:
        return "The training classes are roughly balanced."
    return (
        f"The training classes are imbalanced (largest / smallest = {ratio:.1f}): judge the model by the "
        "per-class recall and macro-F1, not by accuracy alone."
    )


def _peft_text(recipe: Recipe, summary: RunSummary) -> str:
    peft = summary.peft
    if not peft:
        return ""
    share = 100 * peft["trainable_parameters"] / peft["total_parameters"]
    merged = " The adapter has been merged into the weights of this model." if peft.get("merged") else ""
    return (
        f"\nParameter-efficient: a {peft['method']} adapter of rank {recipe.peft.lora_rank} (alpha "
        f"{recipe.peft.lora_alpha:g}) on the convolutions; the new head and the BatchNorm layers trained too, "
        f"{peft['trainable_parameters']:,} of {peft['total_parameters']:,} parameters ({share:.1f}%).{merged}\n"
    )


def _adapter_usage(repo_id: str | None, recipe: Recipe) -> str:
    where = repo_id or "PATH_TO_THIS_FOLDER"
    return f"""This repository holds a {recipe.peft.peft_method} adapter for the base model `{recipe.model.model}`
(with the new head and the BatchNorm layers), not full weights. hf-cnn-ft rebuilds the base model
from `recipe.yaml` and loads the adapter onto it:

```bash
hf-cnn-ft predict {where} image.jpg
hf-cnn-ft merge {where} merged/      # a plain model directory for transformers, timm or export
```
"""


def _usage(repo_id: str | None, summary: RunSummary) -> str:
    where = repo_id or "PATH_TO_THIS_FOLDER"
    text = f"""```python
from transformers import pipeline

classifier = pipeline("image-classification", model="{where}")
classifier("image.jpg")
```
"""
    text += f"""
A demo page in the browser (drop an image, see the top classes and where the model looked), with
`pip install 'hf-cnn-ft[app]'`: `hf-cnn-ft app {where}`.
"""
    if summary.library == "timm":
        timm_source = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH_TO_THIS_FOLDER"
        text += f"""
The weights are in timm's own layout, so timm loads them directly, label names included:

```python
import timm

model = timm.create_model("{timm_source}", pretrained=True).eval()
config = timm.data.resolve_data_config(model=model)
transform = timm.data.create_transform(**config)
```
"""
    return text


def _card_data(recipe: Recipe, summary: RunSummary, repo_id: str | None) -> ModelCardData:
    evaluated_on, report = summary.evaluated_on, summary.evaluation
    dataset = recipe.data.dataset
    dataset_name = dataset if is_hub_id(dataset) else Path(str(dataset)).name or str(dataset)
    common = {
        "task_type": "image-classification",
        "task_name": "Image Classification",
        "dataset_type": dataset if is_hub_id(dataset) else "imagefolder",
        "dataset_name": dataset_name,
        "dataset_split": evaluated_on,
        "dataset_revision": recipe.data.dataset_revision,
    }
    eval_results = [
        EvalResult(metric_type="accuracy", metric_name="Accuracy", metric_value=report["accuracy"], **common),
        EvalResult(metric_type="f1", metric_name="Macro F1", metric_value=report["f1_macro"], **common),
        EvalResult(
            metric_type="precision", metric_name="Macro precision", metric_value=report["precision_macro"], **common
        ),
        EvalResult(metric_type="recall", metric_name="Macro recall", metric_value=report["recall_macro"], **common),
    ]
    if "map" in report:
        eval_results.append(
            EvalResult(metric_type="map", metric_name="Mean average precision", metric_value=report["map"], **common)
        )
    base_model = summary.base_model
    library = "timm" if summary.library == "timm" else "transformers"
    return ModelCardData(
        license=recipe.hub.license,
        library_name="peft" if summary.is_adapter else library,
        pipeline_tag="image-classification",
        tags=["image-classification", "hf-cnn-ft", "cnn", f"strategy-{recipe.finetune.strategy}"]
        + ([] if recipe.model.pretrained or recipe.model.weights else ["trained-from-scratch"]),
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=[dataset] if is_hub_id(dataset) else None,
        metrics=["accuracy", "f1", "precision", "recall"],
        model_name=(repo_id or "fine-tuned-cnn").split("/")[-1],
        eval_results=eval_results,
    )


def build_model_card(
    recipe: Recipe,
    summary: RunSummary,
    repo_id: str | None = None,
    pictures: list[str] = (),
    exports: list[tuple[str, dict[str, Any]]] = (),
) -> ModelCard:
    """The card; `exports` are the (folder, export report) pairs of the exports pushed with the model."""
    images = "\n".join(f"![{PICTURES[name]}]({name})\n" for name in pictures)
    text = f"""---
{_card_data(recipe, summary, repo_id).to_yaml()}
---

{_body(recipe, summary, repo_id, images, exports_text(list(exports)))}"""
    return ModelCard(text)


def _origin_text(recipe: Recipe, base_model: str) -> str:
    """Where the weights started: pretrained, a weights file, or random initialisation (a baseline)."""
    if recipe.model.weights:
        start = f"initialised from the weights file `{Path(str(recipe.model.weights)).name}`"
    elif recipe.model.pretrained:
        start = "with its pretrained weights"
    else:
        return (
            f"It is the `{base_model}` architecture, randomly initialised (`model.pretrained: false`) and "
            f"trained from scratch with [hf-cnn-ft]({TOOL_URL}): a baseline, not a fine-tuned pretrained model."
        )
    return f"It is `{base_model}`, {start}, with a new classification head, fine-tuned with [hf-cnn-ft]({TOOL_URL})."


def _task_text(labels: list[str], multi_label: bool) -> str:
    names = ", ".join(f"`{name}`" for name in labels)
    if multi_label:
        return f"tags an image with any of {len(labels)} labels, several at once: {names}."
    return f"sorts an image into one of {len(labels)} classes: {names}."


def _overall_table(report: dict[str, Any]) -> str:
    keys = ("accuracy", "map", "f1_macro", "f1_micro", "precision_macro", "recall_macro", "f1_weighted")
    keys += ("top5_accuracy", "hamming_loss")
    return "\n".join(f"| {key} | {report[key]:.4f} |" for key in keys if key in report)


def _body(recipe: Recipe, summary: RunSummary, repo_id: str | None, images: str, exports: str) -> str:
    """The card's text below its metadata: what the model is, its data, training, results, usage."""
    evaluated_on, report, labels = summary.evaluated_on, summary.evaluation, summary.label_names
    base_model = summary.base_model or _model_name(recipe.model.model)
    overall, multi_label = _overall_table(report), summary.label_thresholds is not None
    revision = f" (revision `{recipe.data.dataset_revision}`)" if recipe.data.dataset_revision else ""
    return f"""# {repo_id or "Image classifier"}: `{base_model}` fine-tuned for {len(labels)} classes

This model {_task_text(labels, multi_label)}
{_origin_text(recipe, base_model)}

## Training data

Source: `{recipe.data.dataset}`{revision}.
Split sizes: {", ".join(f"{k} {'streamed' if v is None else v}" for k, v in summary.split_sizes.items())}.
Unreadable images skipped: {summary.skipped_images}.{_duplicates_text(summary.duplicates)}

{_counts_table(summary)}

## Training procedure

Input: {_preprocessing_text(summary.preprocessing)}.
{_strategy_text(recipe, summary)} Training took {summary.train_seconds:.0f} s on {_hardware_text(summary)}.
{_peft_text(recipe, summary)}
{_hyperparameters_table(recipe)}

<details>
<summary>The resolved recipe (reproduces the run with <code>hf-cnn-ft train recipe.yaml</code>)</summary>

```yaml
{recipe_to_yaml(recipe).strip()}
```

</details>

## Results

On the {evaluated_on} split ({report["num_samples"]} images, never seen in training or model selection):

| metric | value |
|---|---|
{overall}

{_metrics_table(report)}

{label_set_text(summary.label_thresholds)}{_test_time_text(summary)}
{images}
{report_text(summary.report)}
{search_text(summary.search)}
{exports}
## How to use

{_adapter_usage(repo_id, recipe) if summary.is_adapter else _usage(repo_id, summary)}
## Limitations

{_imbalance_note(summary)} The model only knows the classes above and was evaluated on
{report["num_samples"]} held-out images from the same source as its training data; expect lower accuracy
on images from another camera, scanner or setting. {rejection_text(summary.unknown_rejection, multi_label)}
"""


def pictures_in(directory: Path) -> list[str]:
    return [name for name in PICTURES if (directory / name).is_file()]


def write_model_card(directory: Path, recipe: Recipe, summary: RunSummary, repo_id: str | None = None) -> Path:
    """Writes README.md into `directory`, referencing the pictures that are there."""
    path = directory / "README.md"
    temporary = path.with_name(".README.md.tmp")
    build_model_card(recipe, summary, repo_id, pictures_in(directory)).save(temporary)
    temporary.replace(path)
    return path
