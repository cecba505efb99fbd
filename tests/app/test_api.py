"""The Python API: `from hf_cnn_ft import Recipe, train, evaluate, predict, load_model`, as a notebook uses it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import TINY_SETTINGS

from hf_cnn_ft import Recipe, UserError, evaluate, load_model, predict, train


def test_a_recipe_from_yaml_takes_typed_keyword_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: {model: resnet50}\ntraining: {learning_rate: 1.0e-3, num_train_epochs: 10}\n")
    recipe = Recipe.from_yaml(path, learning_rate=3e-4, num_train_epochs="5", strategy="gradual")
    assert recipe.training.learning_rate == 3e-4 and recipe.training.num_train_epochs == 5.0
    assert recipe.model.model == "resnet50"
    assert recipe.finetune.lr_decay == 0.7  # the strategy's defaults are filled at load, as on the command line
    assert Recipe.from_yaml(path).training.learning_rate == 1e-3  # the file itself is unchanged
    with pytest.raises(UserError, match="unknown key 'learning_rat'; did you mean 'learning_rate'"):
        Recipe.from_yaml(path, learning_rat=3e-4)
    with pytest.raises(UserError, match="finetune.bn: 'sometimes' is not one of"):
        Recipe.from_yaml(path, bn="sometimes")
    assert Recipe.from_dict(recipe.to_dict()["training"] | {"model": "resnet50"}).training.learning_rate == 3e-4


@pytest.mark.slow
def test_train_evaluate_predict_and_load_from_python(tmp_path, shapes_dir):
    settings = {**TINY_SETTINGS, "num_train_epochs": 3, "disable_tqdm": True}
    recipe = Recipe.from_yaml(None, dataset=str(shapes_dir), output_dir=str(tmp_path / "out"), **settings)
    result = train(recipe)

    assert result.output_dir == tmp_path / "out" and (result.output_dir / "metrics.json").is_file()
    assert result.metrics["accuracy"] == pytest.approx(evaluate(result.output_dir)["accuracy"])
    model, data_config = load_model(result.output_dir)
    pixels = torch.randn(2, 3, data_config.input_size, data_config.input_size)
    with torch.no_grad():
        torch.testing.assert_close(result.model(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
    image = next(p for p in sorted((shapes_dir / "red_disc").iterdir()))
    (prediction,) = predict(result.output_dir, [image], top_k=2)
    assert len(prediction.labels) == 2 and set(prediction.labels) <= {"red_disc", "green_square", "blue_triangle"}


def test_importing_the_package_loads_no_framework():
    """`import hf_cnn_ft` (and so `hf-cnn-ft --help`'s first step) does not pay for torch or transformers."""
    code = "import sys, hf_cnn_ft; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
