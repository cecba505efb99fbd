"""The Python API, for notebooks and scripts: the same steps as the command line, as functions.

from hf_cnn_ft import Recipe, evaluate, load_model, predict, prepare_cpu_process, train

prepare_cpu_process()  # once per process, on a CPU machine: what the command line does
recipe = Recipe.from_yaml("recipes/food-mobilenetv2.yaml", num_train_epochs=5, output_dir="outputs/food")
result = train(recipe)  # result.metrics, result.output_dir, result.model
evaluate(result.output_dir)["accuracy"]
predict(result.output_dir, ["photo.jpg"], top_k=3)
model, data_config = load_model(result.output_dir)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_cnn_ft.config.recipe import Recipe
from hf_cnn_ft.evaluation.evaluate import evaluate_model
from hf_cnn_ft.evaluation.predict import Prediction, predict_files
from hf_cnn_ft.share.run_dir import data_arguments_for, load_run, test_time_flips_for
from hf_cnn_ft.training.machine import prepare_cpu_process
from hf_cnn_ft.training.train import TrainResult, train

__all__ = ["Prediction", "Recipe", "TrainResult", "evaluate", "load_model", "predict", "prepare_cpu_process", "train"]


def evaluate(
    model_dir: str | Path, data: str | None = None, split: str = "test", tta: str | None = None
) -> dict[str, Any]:
    """Every metric of a fine-tuned model on a labelled dataset.

    Args:
        model_dir: a run's output directory, an adapter run or a Hub repo id.
        data: the dataset; default: the one the run trained on, with its splits, so `test` is the run's
            own held-out test split.
        split: test, validation, train or all.
        tta: test-time flips (none, horizontal, vertical, both); default: the run's own setting.
    """
    data_args = data_arguments_for(Path(model_dir), data)
    return evaluate_model(model_dir, data_args, split, test_time_flips_for(model_dir, tta))


def predict(
    model_dir: str | Path, inputs: Sequence[str | Path], top_k: int = 3, tta: str | None = None
) -> list[Prediction]:
    """Top-k labels and probabilities for image files and folders; unreadable files carry an error."""
    return predict_files(model_dir, inputs, top_k=top_k, test_time_flips=test_time_flips_for(model_dir, tta))


def load_model(model_dir: str | Path):
    """(model, DataConfig) of a run directory, adapter run (merged) or Hub repo, in inference mode."""
    return load_run(model_dir)
