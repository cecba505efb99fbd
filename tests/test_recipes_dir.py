"""Every shared recipe loads, validates and names a model and dataset that can exist."""

import re
from pathlib import Path

import pytest
import timm

from hf_cnn_ft.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def test_there_is_a_recipe_per_backbone_family():
    text = " ".join(load_recipe(p).model.model.lower() for p in RECIPES)
    for family in ("resnet", "convnext", "efficientnet", "mobilenet"):
        assert family in text, family


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_is_valid(path):
    recipe = load_recipe(path)
    model = recipe.model.model
    assert model, "recipe names no model"
    if model.startswith("timm/"):
        assert timm.is_model(model.removeprefix("timm/")), model
    elif "/" in model:
        assert HUB_ID.match(model), model
    else:
        assert timm.is_model(model), f"{model} is not a timm architecture"
    dataset = recipe.data.dataset
    assert dataset and (HUB_ID.match(dataset) or Path(dataset).suffix or dataset.startswith(("data/", "./"))), dataset
    assert recipe.training.output_dir.startswith("outputs/")
    header = path.read_text().split("\n", 1)[0]
    assert header.startswith("# "), "recipes open with a comment saying what they are for"
    assert "hf-cnn-ft train recipes/" + path.name in path.read_text(), "recipes state the command that runs them"
