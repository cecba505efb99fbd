"""The run's report: Grad-CAM that points at the evidence, temperature scaling that calibrates without
changing a prediction, slices, top losses, and a report failure that never costs the run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from datasets import Image as ImageFeature
from PIL import Image
from synthetic import make_hard_shapes_folder, make_mark_folder

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.data.inputs import pixel_values
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.evaluation.calibration import expected_calibration_error, fit_temperature, probabilities
from hf_cnn_ft.evaluation.gradcam import grad_cam
from hf_cnn_ft.share.run_dir import load_run

MARK_RUN = {
    **TINY_SETTINGS,
    "image_size": 256,  # an 8 x 8 last-stage map: cells smaller than the mark
    "crop_pct": 1.0,  # the whole image, so that the mark's box holds in the model's view
    "crop_scale": "[0.85, 1.0]",
    "strategy": "full",
    "num_train_epochs": 15,
    "learning_rate": 3e-3,
    "early_stopping_patience": "null",  # from scratch, the first epochs can sit at chance
    "test_fraction": 0.25,
}


def _peak_inside_mark_share(run: Path, boxes: dict[str, tuple[int, int, int, int]], random_maps: bool) -> float:
    """Of the correctly classified test images, the share whose Grad-CAM peak lies inside the mark."""
    model, data_config = load_run(run)
    test = load_image_data(load_recipe(run / "recipe.yaml").data).splits["test"]
    paths = [row["path"] for row in test.cast_column("image", ImageFeature(decode=False))["image"]]
    pixels = pixel_values([Image.open(p) for p in paths], eval_transform(data_config))
    labels = torch.tensor(test["label"])
    with torch.no_grad():
        correct = model(pixel_values=pixels).logits.argmax(-1) == labels
    assert correct.float().mean() >= 0.8, "the model did not learn the marks"
    maps = torch.rand(len(paths), *pixels.shape[-2:]) if random_maps else grad_cam(model, pixels, labels)
    hits = []
    for k in np.flatnonzero(correct.numpy()):
        y, x = divmod(int(maps[k].argmax()), maps.shape[-1])
        x0, y0, x1, y1 = boxes[paths[k]]
        hits.append(x0 <= x < x1 and y0 <= y < y1)
    return float(np.mean(hits))


def _native_convnext(folder: Path) -> Path:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1])).save_pretrained(
        folder
    )
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["timm", "transformers"])
def test_grad_cam_peaks_inside_the_mark_that_decides_the_class(tmp_path, backbone):
    boxes = make_mark_folder(tmp_path / "marks", per_class=120, size=256, mark=48)  # 3.5% of the image
    model = "test_convnext" if backbone == "timm" else _native_convnext(tmp_path / "native")
    run = tmp_path / "run"
    settings = {**MARK_RUN, "model": model, "dataset": tmp_path / "marks", "output_dir": run, "top_losses": 0}
    assert main(["train", *overrides(settings)]) == 0
    assert _peak_inside_mark_share(run, boxes, random_maps=False) >= 0.9
    assert _peak_inside_mark_share(run, boxes, random_maps=True) < 0.5  # the check can fail


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 4))
    labels = np.array([rng.choice(4, p=p) for p in probabilities(logits, 2.5)])  # drawn at T = 2.5
    fitted = fit_temperature(logits * 1.0, labels)
    assert fitted == pytest.approx(2.5, rel=0.1)
    assert expected_calibration_error(probabilities(logits, fitted), labels) < expected_calibration_error(
        probabilities(logits), labels
    )


@pytest.fixture(scope="module")
def overconfident_run(tmp_path_factory) -> Path:
    """Long training on few images: a model that is sure of itself beyond its accuracy."""
    root = tmp_path_factory.mktemp("overconfident")
    make_hard_shapes_folder(root / "shapes", per_class=60, size=32, seed=3)
    settings = {
        **TINY_SETTINGS,
        "dataset": root / "shapes",
        "output_dir": root / "run",
        "strategy": "full",
        "max_train_samples": 24,
        "validation_fraction": 0.3,
        "test_fraction": 0.3,
        "num_train_epochs": 40,
        "learning_rate": 1e-2,
        "hflip": 0.0,
        "early_stopping_patience": "null",
        "save_strategy": "no",
        "eval_strategy": "no",
        "load_best_model_at_end": False,
    }
    assert main(["train", *overrides(settings)]) == 0
    return root / "run"


def test_temperature_scaling_calibrates_an_overconfident_model_without_changing_predictions(overconfident_run):
    summary = json.loads((overconfident_run / "metrics.json").read_text())
    temperature = summary["calibration"]["temperature"]
    assert temperature > 1
    calibration = summary["report"]["calibration"]
    assert calibration["temperature"] == temperature and calibration["ece_scaled"] < calibration["ece"]
    config = json.loads((overconfident_run / "config.json").read_text())
    assert config["calibration_temperature"] == pytest.approx(temperature)  # saved with the weights

    model, data_config = load_run(overconfident_run)
    test = load_image_data(load_recipe(overconfident_run / "recipe.yaml").data).splits["test"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values(test["image"], eval_transform(data_config))).logits
    report = json.loads((overconfident_run / "report.json").read_text())
    predicted = [model.config.label2id[row["predicted"]] for row in report["per_image"]]
    assert predicted == logits.argmax(-1).tolist()  # argmax unchanged by the temperature
    scaled = (logits / temperature).softmax(-1).max(-1).values
    assert [row["probability"] for row in report["per_image"]] == pytest.approx(scaled.tolist(), abs=1e-5)


def test_the_temperature_survives_predict_push_pull_and_export(overconfident_run, hub, tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    temperature = json.loads((overconfident_run / "metrics.json").read_text())["calibration"]["temperature"]
    repo_id = hub.repo_id("calibrated")
    assert main(["push", str(overconfident_run), repo_id]) == 0
    assert AutoModelForImageClassification.from_pretrained(repo_id).config.calibration_temperature == pytest.approx(
        temperature
    )
    assert main(["export", str(overconfident_run), "--output", str(tmp_path / "onnx")]) == 0
    preprocessing = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert preprocessing["temperature"] == pytest.approx(temperature)

    image = next((overconfident_run.parent / "shapes").rglob("*.png"))
    capsys.readouterr()
    assert main(["predict", str(overconfident_run), str(image), "--top-k", "1"]) == 0
    printed = float(capsys.readouterr().out.split()[-1])
    model, data_config = load_run(overconfident_run)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values([Image.open(image)], eval_transform(data_config))).logits
    assert printed == pytest.approx(float((logits / temperature).softmax(-1).max()), abs=1e-3)


def test_top_losses_are_the_highest_loss_wrong_images(overconfident_run):
    report = json.loads((overconfident_run / "report.json").read_text())
    wrong = [row for row in report["per_image"] if row["label"] != row["predicted"]]
    expected = [row["index"] for row in sorted(wrong, key=lambda row: -row["loss"])][:12]
    assert report["top_losses"] == expected and len(expected) > 0
    assert (overconfident_run / "top_losses.png").is_file() and (overconfident_run / "reliability.png").is_file()
    card = (overconfident_run / "README.md").read_text()
    assert "## What the model gets wrong" in card and "](top_losses.png)" in card and "| true | predicted as |" in card


def test_the_worst_slice_is_the_corrupted_one(trained_run, shapes_dir, tmp_path, capsys):
    rows = []
    for k, path in enumerate(sorted(shapes_dir.rglob("*.png"))[:30]):
        rows.append((str(path), path.parent.name, "scanner-a"))
        noise = np.random.default_rng(k).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        corrupted = tmp_path / f"corrupted_{k}.png"
        Image.fromarray(noise).save(corrupted)  # the label stays; the picture is gone
        rows.append((str(corrupted), path.parent.name, "scanner-b"))
    table = tmp_path / "sites.csv"
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "site"), *rows])
    out = tmp_path / "report"
    argv = ["report", str(trained_run), "--data", str(table), "--slice_column", "site", "--split", "all"]
    assert main([*argv, "--output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    slices = report["slices"]
    assert slices["worst"] == "scanner-b"
    a, b = slices["per_slice"]["scanner-a"]["accuracy"], slices["per_slice"]["scanner-b"]["accuracy"]
    assert a - b > 0.3  # clean images are recognised, noise is not
    overall = np.mean([row["label"] == row["predicted"] for row in report["per_image"]])
    assert slices["overall_accuracy"] == pytest.approx(overall)
    assert slices["gap"] == pytest.approx(overall - b)
    assert "worst slice scanner-b" in capsys.readouterr().out


def test_a_failing_report_never_costs_the_run(tmp_path, shapes_dir, monkeypatch, caplog):
    import hf_cnn_ft.evaluation.model_report as model_report

    def broken(*args, **kwargs):
        raise RuntimeError("no CAM today")

    monkeypatch.setattr(model_report, "grad_cam_views", broken)
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "num_train_epochs": 2, "dataset": shapes_dir, "output_dir": out}
    assert main(["train", *overrides(settings)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["test"]["accuracy"] >= 0 and "report" not in summary
    assert "the report could not be written (RuntimeError: no CAM today)" in caplog.text
    assert f"hf-cnn-ft report {out}" in caplog.text


def test_report_bad_input_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    import hf_cnn_ft.evaluation.gradcam as gradcam

    def error_line() -> str:
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-cnn-ft: error:")]
        assert len(lines) == 1
        return lines[0]

    assert main(["report", str(trained_run), "--slice_column", "site", "--output_dir", str(tmp_path / "a")]) == 2
    assert "slice column 'site' not found" in error_line()

    no_test = tmp_path / "no-test"
    shutil.copytree(trained_run, no_test, ignore=shutil.ignore_patterns("checkpoint-*"))
    recipe = (no_test / "recipe.yaml").read_text().replace("test_fraction: 0.1", "test_fraction: 0.0")
    (no_test / "recipe.yaml").write_text(recipe)
    assert main(["report", str(no_test), "--output_dir", str(tmp_path / "b")]) == 2
    line = error_line()
    assert "has no test split" in line and "--split validation" in line

    monkeypatch.setattr(gradcam, "stages", lambda model: {"head": []})
    assert main(["report", str(trained_run), "--output_dir", str(tmp_path / "c")]) == 2
    assert "cannot find the last stage" in error_line()


def test_report_on_a_hub_model_goes_to_its_own_folder(trained_run, shapes_dir, hub, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoint-*"))
    repo_id = hub.repo_id("reported")
    assert main(["push", str(run), repo_id]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["report", repo_id, "--data", str(shapes_dir), "--split", "validation"]) == 0
    report = json.loads((tmp_path / "report-reported" / "report.json").read_text())
    assert report["split"] == "validation" and report["num_samples"] == len(report["per_image"]) > 0
    assert not (run / "report.json").exists() or json.loads((run / "report.json").read_text())["split"] == "test"
