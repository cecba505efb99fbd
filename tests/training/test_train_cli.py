"""End to end through the command line: train, the artefacts, evaluate, predict, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_SETTINGS, cli_env, overrides
from PIL import Image
from transformers import pipeline

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.extras.synthetic import CLASSES, make_shapes_folder

pytestmark = pytest.mark.slow
ARTEFACTS = [
    "model.safetensors",
    "config.json",
    "metrics.json",
    "confusion_matrix.png",
    "training_curves.png",
    "recipe.yaml",
    "README.md",
]


def test_training_reaches_90_percent_and_writes_every_artefact(trained_run):
    for name in ARTEFACTS:
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["best_validation"]["accuracy"] >= 0.9
    assert metrics["evaluated_on"] == "test"
    test = metrics["test"]
    n_test = metrics["split_sizes"]["test"]
    assert n_test == 12 and test["num_samples"] == n_test and sum(map(sum, test["confusion_matrix"])) == n_test
    assert set(test["per_class"]) == set(CLASSES)
    assert metrics["skipped_images"] == 0
    assert not (trained_run / ".staging").exists()


def test_model_card_describes_data_procedure_and_results(trained_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(trained_run / "README.md")
    # A timm backbone is saved in timm's layout: the Hub shows timm's snippet, transformers loads it too.
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "timm"
    test_accuracy = json.loads((trained_run / "metrics.json").read_text())["test"]["accuracy"]
    accuracy = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == pytest.approx(test_accuracy) and accuracy.dataset_split == "test"
    for heading in ("## Training data", "## Training procedure", "## Results", "## How to use", "## Limitations"):
        assert heading in card.text, heading
    assert "| red_disc |" in card.text and "Strategy `two_phase`" in card.text
    for picture in ("confusion_matrix.png", "training_curves.png", "linear_probe_curves.png"):
        assert f"]({picture})" in card.text and (trained_run / picture).is_file()


def test_a_randomly_initialised_run_says_so_in_card_and_config(trained_run):
    from huggingface_hub import ModelCard

    assert TINY_SETTINGS["pretrained"] is False
    card = ModelCard.load(trained_run / "README.md")
    assert "randomly initialised" in card.text and "trained-from-scratch" in card.data.tags
    assert "ImageNet" not in card.text and "pretrained weights" not in card.text
    assert card.data.base_model is None
    pretrained_cfg = json.loads((trained_run / "config.json").read_text())["pretrained_cfg"]
    assert not {"tag", "hf_hub_id", "url"} & pretrained_cfg.keys()  # no claim about ImageNet weights
    assert pretrained_cfg["mean"] and pretrained_cfg["input_size"]  # the preprocessing stays


def test_pipeline_on_the_output_directory_predicts_the_users_labels(trained_run, shapes_dir):
    classifier = pipeline("image-classification", model=str(trained_run))
    hits = 0
    for name in CLASSES:
        image = Image.open(sorted((shapes_dir / name).iterdir())[0])
        top = classifier(image)[0]["label"]
        assert top in CLASSES
        hits += top == name
    assert hits >= 2


def test_saved_recipe_reproduces_the_run_settings(trained_run, shapes_dir):
    saved = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    assert saved["model"]["model"] == "test_resnet" and saved["data"]["dataset"] == str(shapes_dir)
    assert saved["training"]["learning_rate"] == TINY_SETTINGS["learning_rate"]


def test_training_the_saved_recipe_again_gives_the_same_model(trained_run, tmp_path):
    from safetensors.torch import load_file

    again = tmp_path / "again"
    assert main(["train", str(trained_run / "recipe.yaml"), "--output_dir", str(again)]) == 0
    first, second = load_file(str(trained_run / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    saved = yaml.safe_load((again / "recipe.yaml").read_text())
    original = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    original["training"]["output_dir"] = str(again)
    assert saved == original  # every resolved value written, the same both times


def test_evaluate_reuses_the_runs_test_split(trained_run, capsys, tmp_path):
    assert main(["evaluate", str(trained_run), "--output", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    saved = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert report["confusion_matrix"] == saved["confusion_matrix"]
    assert "accuracy" in capsys.readouterr().out


def test_predict_writes_top_k_and_reports_unreadable_files(trained_run, shapes_dir, tmp_path, capsys):
    (tmp_path / "broken.png").write_text("no image here")
    image = sorted((shapes_dir / "red_disc").iterdir())[0]
    code = main(
        [
            "predict",
            str(trained_run),
            str(image),
            str(tmp_path / "broken.png"),
            "--top-k",
            "2",
            "--output",
            str(tmp_path / "p.json"),
        ]
    )
    assert code == 0
    records = json.loads((tmp_path / "p.json").read_text())
    assert len(records) == 2 and len(records[0]["predictions"]) == 2
    assert records[0]["predictions"][0]["label"] in CLASSES and records[0]["error"] is None
    assert records[1]["error"] and not records[1]["predictions"]
    main(["predict", str(trained_run), str(shapes_dir / "green_square"), "--output", str(tmp_path / "p.csv")])
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith("path,label_1,score_1") and len(rows) == 1 + len(
        list((shapes_dir / "green_square").iterdir())
    )
    assert rows[0].endswith(",answer,familiarity,error")
    answers = [row.split(",")[-3] for row in rows[1:]]
    assert set(answers) <= {*CLASSES, "unknown"} and answers[0]  # each image's answer: a class, or unknown


def test_corrupt_images_are_skipped_listed_and_training_goes_on(tmp_path, shapes_dir, copy_of):
    folder = copy_of(shapes_dir)
    (folder / "red_disc" / "fake.png").write_text("text, not pixels")
    (folder / "blue_triangle" / "cut.jpg").write_bytes(
        (folder / "blue_triangle" / "blue_triangle_001.jpg").read_bytes()[:300]
    )
    out = tmp_path / "out"
    code = main(["train", *overrides({**TINY_SETTINGS, "num_train_epochs": 1, "dataset": folder, "output_dir": out})])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == 2
    listed = (out / "skipped_images.tsv").read_text()
    assert "fake.png" in listed and "cut.jpg" in listed


def test_zero_test_fraction_evaluates_on_validation(tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "num_train_epochs": 1, "dataset": shapes_dir, "output_dir": out, "test_fraction": 0}
    assert main(["train", *overrides(settings)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "validation" and "test" not in metrics


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {
        **TINY_SETTINGS,
        "dataset": shapes_dir,
        "output_dir": out,
        "learning_rate": 0.0,
        "bn": "frozen",  # nor do the BatchNorm statistics move
        "early_stopping_patience": 2,
        "num_train_epochs": 10,
    }
    assert main(["train", *overrides(settings)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # With nothing learnt, the metric never improves on epoch 1: patience 2 stops after epoch 3.
    assert metrics["epochs_trained"] == 3


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_real_entry_point_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_cnn_ft", "train", "--dataset", str(tmp_path / "nowhere"), "--model", "test_resnet"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"hf-cnn-ft: error: data path {tmp_path / 'nowhere'} does not exist" in result.stderr


def test_tiny_images_train_above_chance_with_defaults_and_the_chosen_input_is_saved(tmp_path, caplog):
    """25-px images (LFW-crop size), every setting at its default but the (tiny, untrained) backbone."""
    folder = make_shapes_folder(tmp_path / "tiny", per_class=30, size=25)
    out = tmp_path / "run"
    caplog.set_level("INFO", logger="hf_cnn_ft")
    defaults = ["--model", "test_resnet", "--pretrained", "false", "--disable_tqdm", "true"]
    assert main(["train", "--dataset", str(folder), "--output_dir", str(out), *defaults]) == 0
    assert "median shorter edge 25 px" in caplog.text
    saved = yaml.safe_load((out / "recipe.yaml").read_text())["model"]
    assert (saved["image_size"], saved["crop_pct"]) == (128, 1.0)  # chosen, and written where a rerun reads it
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.6  # 3 classes: chance is 0.33
