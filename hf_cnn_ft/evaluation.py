"""Evaluating a fine-tuned model directory on a labelled dataset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from .data import IMAGE_COLUMN, LABEL_COLUMN, ImageData, load_image_data, to_rgb
from .errors import UserError
from .metrics import classification_report
from .models import load_model
from .recipe import DataArguments, Recipe, load_recipe
from .transforms import eval_transform, evaluation_views

ALL_SPLITS = "all"


def saved_recipe(model_dir: str | Path) -> Recipe | None:
    """The recipe of the run that wrote `model_dir`, if it is a local directory that holds one."""
    saved = Path(model_dir) / "recipe.yaml"
    return load_recipe(saved) if saved.is_file() else None


def test_time_flips_for(model_dir: str | Path, flips: str | None) -> str:
    """`flips` if given, else the test-time flips of the run that wrote `model_dir` (none without a recipe)."""
    if flips is not None:
        return flips
    recipe = saved_recipe(model_dir)
    return recipe.augment.test_time_flips if recipe else "none"


def data_arguments_for(model_dir: Path, dataset: str | None) -> DataArguments:
    """The data section of the run that wrote `model_dir`, pointed at `dataset` if given.

    Reusing the run's split settings means `evaluate` sees exactly the test images that
    training held out.
    """
    saved = model_dir / "recipe.yaml"
    recipe = saved_recipe(model_dir)
    args = recipe.data if recipe else DataArguments()
    if dataset is not None:
        args = replace(args, dataset=dataset)
    if not args.dataset:
        raise UserError(f"no dataset given and {saved} does not name one: pass --data PATH_OR_HUB_ID")
    return args


def _label_mapping(data_labels: list[str], model_labels: dict[str, int], source: str) -> np.ndarray:
    unknown = [name for name in data_labels if name not in model_labels]
    if unknown:
        raise UserError(
            f"{source} has classes the model does not know ({', '.join(unknown[:5])}); "
            f"the model's classes are: {', '.join(model_labels)}"
        )
    return np.array([model_labels[name] for name in data_labels], dtype=np.int64)


def mean_logits(model: torch.nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """The model's logits averaged over the views of one batch (each a batch of pixel values)."""
    return torch.stack([model(pixel_values=pixels).logits.float() for pixels in views]).mean(0)


def predict_scores(
    model: torch.nn.Module, dataset: Dataset, transform, batch_size: int = 64, test_time_flips: str = "none"
) -> np.ndarray:
    """Logits for every image of `dataset`, in order, averaged over the test-time views."""
    views = evaluation_views(transform, test_time_flips)

    def collate(rows: list[dict[str, Any]]) -> list[torch.Tensor]:
        images = [to_rgb(row[IMAGE_COLUMN]) for row in rows]
        return [torch.stack([view(image) for image in images]) for view in views]

    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    outputs = []
    with torch.inference_mode():
        for batches in loader:
            outputs.append(mean_logits(model, batches).numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, model.config.num_labels), dtype=np.float32)


def evaluate_model(
    model_dir: str | Path, data_args: DataArguments, split: str = "test", test_time_flips: str = "none"
) -> dict[str, Any]:
    """Every metric of the model on one split (or all images) of a labelled dataset."""
    model, data_config = load_model(model_dir)
    if split == ALL_SPLITS:
        data_args = replace(data_args, validation_fraction=0.5, test_fraction=0.0)
    data: ImageData = load_image_data(data_args)
    if split == ALL_SPLITS:
        from datasets import concatenate_datasets

        dataset = concatenate_datasets(list(data.splits.values()))
    elif split == "test":
        dataset = data.splits[data.evaluation_split]
    elif split in data.splits:
        dataset = data.splits[split]
    else:
        raise UserError(f"split '{split}' not found; use one of: {', '.join(data.splits)}, {ALL_SPLITS}")
    mapping = _label_mapping(data.label_names, model.config.label2id, data_args.dataset or "")
    references = mapping[np.asarray(dataset[LABEL_COLUMN], dtype=np.int64)]
    scores = predict_scores(model, dataset, eval_transform(data_config), test_time_flips=test_time_flips)
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    report = classification_report(scores, references, label_names)
    report["skipped_images"] = len(data.skipped)
    return report
