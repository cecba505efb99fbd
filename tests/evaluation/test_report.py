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

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.data.inputs import pixel_values
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.evaluation.calibration import (
    MIN_CALIBRATION_IMAGES,
    expected_calibration_error,
    fit_temperature,
    probabilities,
)
from hf_cnn_ft.evaluation.gradcam import grad_cam
from hf_cnn_ft.extras.synthetic import make_hard_shapes_folder, make_mark_folder
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
    fit = fit_temperature(logits * 1.0, labels)
    assert fit.fitted and fit.temperature == pytest.approx(2.5, rel=0.1)
    assert expected_calibration_error(probabilities(logits, fit.temperature), labels) < expected_calibration_error(
        probabilities(logits), labels
    )


def test_temperature_is_left_alone_on_too_few_images_or_a_split_without_errors():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (MIN_CALIBRATION_IMAGES - 1, 4))
    labels = np.array([rng.choice(4, p=p) for p in probabilities(logits, 2.5)])
    few = fit_temperature(logits, labels)
    assert not few.fitted and few.temperature == 1.0 and f"{MIN_CALIBRATION_IMAGES - 1} validation images" in few.reason
    logits = rng.normal(0, 3, (200, 4))
    perfect = fit_temperature(logits, logits.argmax(axis=1))  # every image right: the fit runs towards T = 0
    assert not perfect.fitted and perfect.temperature == 1.0 and "0 errors" in perfect.reason


def test_a_tiny_validation_split_leaves_the_probabilities_as_trained(trained_run):
    """The shared run validates on 12 images: no temperature, and the run says why."""
    calibration = json.loads((trained_run / "metrics.json").read_text())["calibration"]
    assert calibration["fitted"] is False and calibration["temperature"] == 1.0
    assert "validation images, below the" in calibration["reason"]
    assert "calibration_temperature_folded" not in json.loads((trained_run / "config.json").read_text())


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


@pytest.mark.slow
def test_temperature_scaling_calibrates_an_overconfident_model_without_changing_predictions(overconfident_run):
    summary = json.loads((overconfident_run / "metrics.json").read_text())
    temperature = summary["calibration"]["temperature"]
    assert summary["calibration"]["fitted"] and temperature > 1
    calibration = summary["report"]["calibration"]
    assert calibration["temperature"] == pytest.approx(temperature) and calibration["ece_scaled"] < calibration["ece"]
    config = json.loads((overconfident_run / "config.json").read_text())
    assert config["calibration_temperature_folded"] == pytest.approx(temperature)  # recorded, already applied

    model, data_config = load_run(overconfident_run)
    test = load_image_data(load_recipe(overconfident_run / "recipe.yaml").data).splits["test"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_values(test["image"], eval_transform(data_config))).logits
    report = json.loads((overconfident_run / "report.json").read_text())
    predicted = [model.config.label2id[row["predicted"]] for row in report["per_image"]]
    assert predicted == logits.argmax(-1).tolist()  # argmax unchanged by the temperature
    # The saved head gives the calibrated probabilities: what the report shows is the plain softmax of the logits.
    calibrated = logits.softmax(-1).max(-1).values
    assert [row["probability"] for row in report["per_image"]] == pytest.approx(calibrated.tolist(), abs=1e-5)


def _top3(labels: list[str], scores: list[float]) -> list[tuple[str, float]]:
    return [(label, float(score)) for label, score in zip(labels, scores)][:3]


def _same_top3(first: list[tuple[str, float]], second: list[tuple[str, float]]) -> None:
    assert [label for label, _ in first] == [label for label, _ in second]
    assert [score for _, score in first] == pytest.approx([score for _, score in second], abs=1e-5)


def _every_loader(source: str, images: list[Path], local_run: Path) -> dict[str, list]:
    """The top-3 probabilities of each image through transformers' pipeline, timm with its own transforms,
    `hf-cnn-ft predict` and the demo page's model: per loader, per image."""
    import timm
    from transformers import pipeline

    from hf_cnn_ft.app.demo_model import classify, load_demo_model

    found: dict[str, list] = {}
    classifier = pipeline("image-classification", model=source)
    found["pipeline"] = [
        [(row["label"], row["score"]) for row in classifier(Image.open(p).convert("RGB"), top_k=3)] for p in images
    ]
    timm_model = timm.create_model(f"{'local-dir' if Path(source).is_dir() else 'hf-hub'}:{source}", pretrained=True)
    timm_model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=timm_model))
    names = json.loads((local_run / "metrics.json").read_text())["label_names"]
    with torch.no_grad():
        probs = timm_model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images])).softmax(-1)
    found["timm"] = [
        _top3([names[i] for i in row.argsort(descending=True)], row.sort(descending=True).values) for row in probs
    ]
    written = local_run.parent / f"predictions-{Path(source).name}.json"
    assert main(["predict", source, *map(str, images), "--top-k", "3", "--tta", "none", "--output", str(written)]) == 0
    found["predict"] = [
        [(row["label"], row["score"]) for row in record["predictions"]] for record in json.loads(written.read_text())
    ]
    demo = load_demo_model(source)
    answers = [classify(demo, Image.open(p), 3) for p in images]
    found["app"] = [list(zip(answer.labels, answer.scores)) for answer in answers]
    return found


@pytest.mark.slow
def test_one_model_gives_one_answer_in_every_loader_locally_and_after_a_push(overconfident_run, hub, tmp_path):
    """The fitted temperature is in the weights: transformers' pipeline, timm, `predict`, the demo page and
    onnxruntime on the export give the same calibrated top-3 probabilities, from the folder and from the Hub."""
    import onnxruntime

    temperature = json.loads((overconfident_run / "metrics.json").read_text())["calibration"]["temperature"]
    assert temperature > 1.05  # calibration changes the probabilities, so a loader that missed it would show
    images = sorted((overconfident_run.parent / "shapes").rglob("*.png"))[:4]
    local = _every_loader(str(overconfident_run), images, overconfident_run)
    assert main(["export", str(overconfident_run), "--output", str(tmp_path / "onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    model, data_config = load_run(overconfident_run)
    pixels = pixel_values([Image.open(p) for p in images], eval_transform(data_config)).numpy()
    onnx_probs = torch.from_numpy(session.run(None, {"pixel_values": pixels})[0]).softmax(-1)
    names = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())["labels"]
    local["onnx"] = [
        _top3([names[i] for i in row.argsort(descending=True)], row.sort(descending=True).values) for row in onnx_probs
    ]
    repo_id = hub.repo_id("calibrated")
    assert main(["push", str(overconfident_run), repo_id]) == 0
    pulled = _every_loader(repo_id, images, overconfident_run)
    reference = local["predict"]
    for loader, answers in [*local.items(), *((f"{k} (Hub)", v) for k, v in pulled.items())]:
        for image, answer, expected in zip(images, answers, reference):
            try:
                _same_top3(answer, expected)
            except AssertionError as failure:
                raise AssertionError(
                    f"{loader} differs from predict on {image.name}: {answer} vs {expected}"
                ) from failure


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


@pytest.mark.slow
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
