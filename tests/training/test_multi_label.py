"""Several labels per image: lists or separated cells read as label sets, stratified splits, a sigmoid per label,
thresholds fitted on the validation split alone, and the same label sets from predict and transformers' pipeline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from PIL import Image
from sklearn import metrics

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.recipe import build_recipe
from hf_cnn_ft.config.sections import DataArguments
from hf_cnn_ft.data.dataset import split_targets
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.label_set_report import label_set_findings
from hf_cnn_ft.evaluation.multi_label import correctness_as_deployed, fit_thresholds, multi_label_report
from hf_cnn_ft.evaluation.predict import predict_files
from hf_cnn_ft.extras.synthetic import CLASSES, make_multi_label_table
from hf_cnn_ft.models.decisions import decide, decision_correctness, per_image_correct, sigmoid
from hf_cnn_ft.share.exports.exporting import export_model


@pytest.fixture(scope="module")
def label_table(tmp_path_factory) -> Path:
    return make_multi_label_table(tmp_path_factory.mktemp("multi_label"), images=240, size=40, seed=3)


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory, label_table) -> Path:
    output_dir = tmp_path_factory.mktemp("multi_label_run") / "run"
    settings = {**TINY_SETTINGS, "dataset": label_table, "label_separator": ";", "output_dir": output_dir}
    assert main(["train", *overrides(settings)]) == 0
    return output_dir


def test_a_separated_label_cell_is_read_as_a_label_set_and_every_label_reaches_every_split(label_table):
    data = load_image_data(DataArguments(dataset=str(label_table), label_separator=";"))
    assert data.multi_label and data.label_names == sorted(CLASSES)
    assert isinstance(data.splits["train"].features["label"], datasets.List)
    table = [row.split(",")[1].split(";") for row in label_table.read_text().splitlines()[1:]]
    total = sum(len(data.splits[name]) for name in data.splits)
    assert total == len(table)
    for name in ("train", "validation", "test"):
        counts = split_targets(data.splits[name]).sum(0)
        assert (counts > 0).all(), f"a label is missing from the {name} split"
    shares = split_targets(data.splits["test"]).sum(0) / np.array(
        [sum(n in row for row in table) for n in sorted(CLASSES)]
    )
    assert np.all(np.abs(shares - 0.1) < 0.06)  # stratified: about data.test_fraction of each label


def test_json_lines_lists_and_a_hub_sequence_of_classlabel_are_label_sets_without_being_told(tmp_path, label_table):
    rows = [line.split(",") for line in label_table.read_text().splitlines()[1:]]
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"image": str(label_table.parent / p), "tags": t.split(";")}) + "\n" for p, t in rows)
    )
    from_lists = load_image_data(DataArguments(dataset=str(jsonl)))
    assert from_lists.multi_label and from_lists.label_names == sorted(CLASSES)
    names = sorted(CLASSES)
    saved = datasets.Dataset.from_dict(
        {
            "image": [str(label_table.parent / p) for p, _ in rows],
            "labels": [[names.index(n) for n in t.split(";")] for _, t in rows],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "labels": datasets.List(datasets.ClassLabel(names=names))}
        ),
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    from_hub_layout = load_image_data(DataArguments(dataset=str(tmp_path / "saved")))
    assert from_hub_layout.multi_label and from_hub_layout.label_names == names
    assert split_targets(from_hub_layout.splits["train"]).sum() > len(from_hub_layout.splits["train"])


@pytest.mark.parametrize(
    ("cells", "settings", "message"),
    [
        (['["a", "b"]', "[]"], {}, "row 2 of the train split has an empty label list"),
        (['["a;b", "c"]', '["c"]'], {"label_separator": ";"}, "the label 'a;b' contains data.label_separator ';'"),
        (['["a", "b"]', '["c"]'], {"multi_label": False}, "holds lists of labels, but data.multi_label is false"),
        (['["a", "b"]', '["c"]'], {"labels_per_class": 2}, "pseudo-labels one class per image"),
    ],
)
def test_bad_label_sets_are_one_line(tmp_path, label_table, cells, settings, message):
    image = label_table.parent / "0000.png"
    rows = [f'{{"image": "{image}", "label": {cell}}}' for cell in cells * 3]
    (tmp_path / "labels.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match=message.replace("[", r"\[")) as raised:
        load_image_data(DataArguments(dataset=str(tmp_path / "labels.jsonl"), **settings))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"label_separator": ";", "multi_label": False}, "data.label_separator cuts a label cell"),
        ({"label_separator": ""}, "data.label_separator: '' cuts nothing"),
        ({"multi_label": True, "unlabeled": "."}, "data.unlabeled / data.labels_per_class"),
        ({"multi_label": True, "co_tuning_weight": 1.0}, "signal.co_tuning_weight"),
        ({"label_separator": "|", "metric_for_best_model": "top5_accuracy"}, "top5_accuracy ranks one class"),
    ],
)
def test_settings_a_multi_label_run_cannot_use_are_refused_when_the_recipe_loads(settings, message):
    with pytest.raises(UserError, match=message):
        build_recipe({"dataset": "x.csv", "model": "test_resnet", **settings})


def test_the_report_agrees_with_scikit_learn_on_random_label_sets_with_a_label_never_present():
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 5)) < 0.3).astype(np.float32)
    targets[:, 3] = 0  # never present
    logits = rng.normal(0, 2, (300, 5)) + 2 * targets
    thresholds = [0.3, 0.5, 0.7, 0.5, 0.4]
    report = multi_label_report(logits, targets, list("abcde"), thresholds)
    predicted = sigmoid(logits) >= np.array(thresholds)
    truth = targets > 0.5
    assert report["f1_macro"] == pytest.approx(metrics.f1_score(truth, predicted, average="macro", zero_division=0))
    assert report["f1_micro"] == pytest.approx(metrics.f1_score(truth, predicted, average="micro", zero_division=0))
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(truth, predicted))
    assert report["hamming_loss"] == pytest.approx(metrics.hamming_loss(truth, predicted))
    present = [k for k in range(5) if k != 3]
    expected_map = np.mean([metrics.average_precision_score(truth[:, k], sigmoid(logits)[:, k]) for k in present])
    assert report["map"] == pytest.approx(expected_map)
    assert report["per_class"]["d"]["average_precision"] is None and report["per_class"]["d"]["support"] == 0
    assert report["per_class"]["c"]["threshold"] == 0.7


def test_each_threshold_is_the_one_that_maximises_its_labels_f1():
    rng = np.random.default_rng(1)
    targets = (rng.random((400, 2)) < 0.4).astype(np.float32)
    # Label 0 is scored high even when absent (best threshold high), label 1 low even when present.
    logits = np.stack([2.5 + 2 * targets[:, 0] + rng.normal(0, 0.3, 400), -2.5 + 2 * targets[:, 1]], axis=1)
    thresholds = fit_thresholds(logits, targets)
    assert thresholds[0] > 0.9 and sigmoid(-2.5) < thresholds[1] <= sigmoid(-0.5) < 0.5
    for label, threshold in enumerate(thresholds):
        fitted = metrics.f1_score(targets[:, label], sigmoid(logits[:, label]) >= threshold)
        assert fitted >= metrics.f1_score(targets[:, label], sigmoid(logits[:, label]) >= 0.5)


def test_label_smoothing_moves_each_labels_target_towards_one_half(tmp_path):
    from hf_cnn_ft.config.sections import ModelArguments
    from hf_cnn_ft.config.training_arguments import TrainArguments
    from hf_cnn_ft.models.build import build_model
    from hf_cnn_ft.training.trainer import FineTuneTrainer

    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), list("abc"), multi_label=True)
    logits = torch.randn(4, 3)
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.float32)

    def loss(smoothing: float) -> torch.Tensor:
        args = TrainArguments(
            output_dir=str(tmp_path),
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            label_smoothing_factor=smoothing,
        )
        return FineTuneTrainer(model=model, args=args, multi_label=True).supervised_loss(logits, labels)

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(loss(0.0), bce(logits, labels))
    torch.testing.assert_close(loss(0.2), bce(logits, labels * 0.8 + 0.1))
    assert not torch.isclose(loss(0.0), loss(0.2))


@pytest.mark.slow
def test_a_multi_label_run_learns_the_label_sets_and_predict_equals_transformers_pipeline(multi_label_run, label_table):
    from transformers import pipeline

    config = json.loads((multi_label_run / "config.json").read_text())
    metrics_json = json.loads((multi_label_run / "metrics.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    thresholds = config["label_thresholds"]
    assert len(thresholds) == 3 and metrics_json["label_thresholds"]["fitted_on"] == "validation"
    test = metrics_json["test"]
    assert test["map"] > 0.9 and test["f1_macro"] > 0.8, test  # the sets are learnt, not one label per image
    assert not (multi_label_run / "confusion_matrix.png").exists()
    card = (multi_label_run / "README.md").read_text()
    assert "tags an image with any of 3 labels" in card and "label_thresholds" in card and "type: map" in card
    report = json.loads((multi_label_run / "report.json").read_text())
    assert report["multi_label"] and len(report["per_image"]) == test["num_samples"]
    for worst in report["top_losses"]:  # each a wrong decision: a label missed, or given where absent
        row = report["per_image"][worst["index"]]
        assert (worst["label"] in row["labels"]) == worst["has_label"] != (worst["label"] in row["predicted"])
    assert ("top_losses.png" in report["pictures"]) == bool(report["top_losses"])
    assert "## What the model gets wrong" in card

    files = sorted(label_table.parent.glob("*.png"))[:24]
    predicted = predict_files(multi_label_run, files, top_k=3)
    classifier = pipeline("image-classification", model=str(multi_label_run))
    names = [classifier.model.config.id2label[k] for k in range(3)]
    for prediction, scored in zip(predicted, classifier([str(f) for f in files], top_k=None)):
        probability = {entry["label"]: entry["score"] for entry in scored}
        from_pipeline = [name for name, t in zip(names, thresholds) if probability[name] >= t]
        assert prediction.label_set == from_pipeline
        assert prediction.answer == ";".join(from_pipeline)
    assert any(len(p.label_set) > 1 for p in predicted)
    from hf_cnn_ft.app.page import answer_text

    assert answer_text(predicted_answer(multi_label_run, files[0])) == "**" + ", ".join(predicted[0].label_set) + "**"

    export = export_model(multi_label_run, format="onnx")
    from_onnx = predict_files(export.directory, files, top_k=3)
    assert [p.label_set for p in from_onnx] == [p.label_set for p in predicted]


def predicted_answer(run: Path, file: Path):
    from hf_cnn_ft.app.demo_model import classify, load_demo_model

    return classify(load_demo_model(str(run)), Image.open(file), 3)


@pytest.mark.slow
def test_the_thresholds_come_from_the_validation_split_alone(multi_label_run):
    from hf_cnn_ft.config.recipe import load_recipe
    from hf_cnn_ft.data.inputs import pixel_batches
    from hf_cnn_ft.data.transforms import eval_transform
    from hf_cnn_ft.share.run_dir import load_run

    recipe = load_recipe(str(multi_label_run / "recipe.yaml"), [])
    data = load_image_data(recipe.data)
    model, data_config = load_run(multi_label_run)
    with torch.inference_mode():
        logits = torch.cat(
            [
                model(pixel_values=b).logits
                for b in pixel_batches(data.splits["validation"], eval_transform(data_config), 64)
            ]
        )
    refitted = fit_thresholds(logits.numpy(), split_targets(data.splits["validation"]))
    assert refitted == pytest.approx(json.loads((multi_label_run / "config.json").read_text())["label_thresholds"])
    chosen = decide(logits.numpy(), refitted)
    assert chosen.shape == (len(data.splits["validation"]), 3)


@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "full", "mixup_alpha": 0.4, "sampler": "balanced"},
        {"strategy": "gradual", "probe_stages": 1, "cutmix_alpha": 1.0},
        {"strategy": "two_phase", "class_weights": "auto", "metric_for_best_model": "map"},
        {"strategy": "two_phase", "peft_method": "lora", "lora_rank": 4, "pretrained": True},
    ],
    ids=["full-mixup-balanced", "gradual-stage-probe-cutmix", "two-phase-weights-map", "lora"],
)
def test_every_strategy_trains_label_sets(tmp_path, label_table, settings, request):
    output_dir = tmp_path / "run"
    values = {**TINY_SETTINGS, "num_train_epochs": 3, "dataset": label_table, "label_separator": ";"}
    if settings.get("peft_method"):  # an adapter needs weights to adapt: a finished multi-label run's
        values["model"] = request.getfixturevalue("multi_label_run")
    assert main(["train", *overrides({**values, **settings, "output_dir": output_dir})]) == 0
    written = json.loads((output_dir / "metrics.json").read_text())
    thresholds = written["label_thresholds"]["thresholds"]
    assert set(thresholds) == set(CLASSES)
    assert 0 <= written["test"]["map"] <= 1 and "hamming_loss" in written["test"]
    files = sorted(label_table.parent.glob("*.png"))[:8]
    answers = predict_files(output_dir, files)  # the run loads with its thresholds, an adapter run's too
    for prediction in answers:
        probability = dict(zip(prediction.labels, prediction.scores))
        assert prediction.label_set == [n for n in sorted(CLASSES) if probability[n] >= thresholds[n]]


def test_the_linear_probe_strategy_fits_a_sigmoid_head(tmp_path, label_table):
    output_dir = tmp_path / "probe"
    settings = {**TINY_SETTINGS, "dataset": label_table, "multi_label": True, "label_separator": ";"}
    settings.update({"strategy": "linear_probe", "output_dir": output_dir, "class_weights": "auto"})
    assert main(["train", *overrides(settings)]) == 0
    history = json.loads((output_dir / "metrics.json").read_text())["linear_probe_history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert 0 <= history[-1]["eval_f1_macro"] <= 1


def test_the_report_picks_each_labels_most_confidently_wrong_decisions():
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1]], dtype=np.float32)
    logits = np.array([[4.0, -4.0], [-3.0, 1.0], [-1.0, 3.0], [2.0, -5.0], [-0.5, -2.0]])
    found = label_set_findings(logits, targets, ["a", "b"], [0.5, 0.5], top=4)
    worst = [(e["index"], e["label"], e["has_label"]) for e in found["top_losses"]]
    # Two per label, highest loss first. a: image 1 missed (p 0.05), image 3 wrongly given (p 0.88), not image 4
    # (missed at p 0.38, a smaller loss); b: image 4 missed (p 0.12), then image 1 wrongly given (p 0.73).
    assert worst == [(1, "a", True), (3, "a", False), (4, "b", True), (1, "b", False)]
    assert found["per_image"][1] == {
        "index": 1,
        "labels": ["a"],
        "predicted": ["b"],
        "loss": pytest.approx(3.0486 + 1.3133, abs=1e-3),
    }


def test_a_paired_comparison_counts_each_label_decision_not_whole_label_sets():
    targets = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32)
    logits = np.array([[3.0, 2.0, 1.0], [-1.0, 2.0, -2.0]])  # image 0: one label of three wrong
    assert decision_correctness(logits, targets).tolist() == [True, False, True, True, True, True]
    assert per_image_correct(logits, targets).tolist() == [False, True]
    assert decision_correctness(logits, np.array([0, 1])).tolist() == [True, True]  # single-label: per image


def test_label_set_models_are_compared_each_at_its_own_fitted_thresholds():
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 3)) < 0.4).astype(np.float32)
    # Ranks every label perfectly, but every score sits above 0.5: at 0.5 every absent label would be given.
    shifted = np.where(targets > 0.5, 4.0, 1.0) + rng.normal(0, 0.1, targets.shape)
    assert decision_correctness(shifted, targets).mean() < 0.7
    assert correctness_as_deployed(shifted, targets).all()
    single = np.array([[2.0, 1.0], [0.0, 3.0]])
    assert correctness_as_deployed(single, np.array([0, 0])).tolist() == [True, False]  # single-label: top class


@pytest.mark.slow
def test_compare_ranks_label_set_runs_on_map_not_subset_accuracy(tmp_path, label_table):
    out = tmp_path / "compare"
    settings = {**TINY_SETTINGS, "num_train_epochs": 1, "dataset": label_table, "label_separator": ";"}
    assert (
        main(["compare", *overrides({**settings, "output_dir": out}), "--models", "test_resnet", "--splits", "0"]) == 0
    )

    with (out / "leaderboard.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    saved = json.loads((out / "test_resnet" / "seed42" / "metrics.json").read_text())["test"]
    assert float(row["map_mean"]) == pytest.approx(saved["map"], abs=1e-4) and "accuracy_mean" not in row
    assert "| test mAP |" in (out / "leaderboard.md").read_text()
