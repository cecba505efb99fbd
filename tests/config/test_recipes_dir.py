"""Every shared recipe loads, validates and names a model and dataset that can exist."""

import re
import shutil
from pathlib import Path

import pytest
import timm
import yaml

from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.extras.known_weights import KNOWN_WEIGHTS
from hf_cnn_ft.extras.offline_data import OFFLINE_DATASETS

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@pytest.fixture(autouse=True)
def fetched_weights_layout(tmp_path, monkeypatch):
    """Recipes name offline weights under data/weights/, which the recipe checks require to exist: run
    from a folder where they do (as after `hf-cnn-ft import-weights`), without fetching them."""
    monkeypatch.chdir(tmp_path)
    for path in RECIPES:
        model = yaml.safe_load(path.read_text())["model"]["model"]
        if model.startswith("data/"):
            (tmp_path / model).mkdir(parents=True, exist_ok=True)


def test_recipes_name_the_command_that_fetches_missing_weights(tmp_path):
    offline = next(p for p in RECIPES if "data/weights/" in p.read_text())
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(UserError, match="import-weights"):
        load_recipe(offline)


def test_there_is_a_recipe_per_backbone_family():
    text = " ".join(load_recipe(p).model.model.lower() for p in RECIPES)
    for family in ("resnet", "convnext", "efficientnet", "mobilenet"):
        assert family in text, family


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_is_valid(path):
    recipe = load_recipe(path)
    model = recipe.model.model
    text = path.read_text()
    assert model, "recipe names no model"
    if model.startswith("data/weights/"):
        # Offline weights: the recipe says how to fetch them, and the name is one the tool knows.
        known = model.split("/")[2]
        assert known in KNOWN_WEIGHTS and f"import-weights --known {known}" in text
        assert "RESULT:" in text, "offline recipes state the result they reached"
    elif model.startswith("timm/"):
        assert timm.is_model(model.removeprefix("timm/")), model
    elif "/" in model:
        assert HUB_ID.match(model), model
    else:
        assert timm.is_model(model), f"{model} is not a timm architecture"
    dataset = recipe.data.dataset
    if dataset.startswith("data/"):
        assert dataset.split("/")[1] in OFFLINE_DATASETS and f"hf-cnn-ft data {dataset.split('/')[1]}" in text
    assert dataset and (HUB_ID.match(dataset) or Path(dataset).suffix or dataset.startswith(("data/", "./"))), dataset
    assert recipe.training.output_dir.startswith("outputs/")
    header = path.read_text().split("\n", 1)[0]
    assert header.startswith("# "), "recipes open with a comment saying what they are for"
    assert "hf-cnn-ft train recipes/" + path.name in path.read_text(), "recipes state the command that runs them"
