"""The "none of these" answer: a threshold fitted on the validation split alone, stored with the model, and used
by predict, evaluate --unknown, the exports and the card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from PIL import Image, ImageDraw

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.recipe import build_recipe
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.rejection import (
    MIN_CORRECT_IMAGES,
    SCORES,
    Rejection,
    feature_statistics,
    fit_rejection,
    mahalanobis_familiarity,
    max_softmax,
    negative_energy,
    open_set_report,
    rejection_of,
)
from hf_cnn_ft.extras.synthetic import make_shapes_folder
from hf_cnn_ft.share.run_dir import load_run


def test_the_threshold_turns_away_the_asked_share_of_correct_validation_images():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), labels] += rng.uniform(0.5, 6, 400)  # right, with every degree of confidence
    for score in SCORES:
        fit = fit_rejection(logits, labels, 0.1, score)
        correct = logits.argmax(1) == labels
        _, rejected = fit.rejects(logits)
        assert fit.score == score and fit.validation_images == 400
        share = rejected[correct].mean()
        assert share == pytest.approx(0.1, abs=0.01) and share == pytest.approx(fit.validation_rejected, abs=1e-4)


def test_auto_keeps_the_score_that_tells_right_from_wrong_and_too_few_images_fit_nothing():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(0, 0.1, (300, 3))
    right = rng.random(300) < 0.7
    logits[np.arange(300), np.where(right, labels, (labels + 1) % 3)] += 2.0
    # Every logit of a wrong answer shifted down: softmax cannot see it, the energy score can.
    logits[~right] -= 5.0
    fit = fit_rejection(logits, labels, 0.05, "auto")
    assert fit.score == "energy"
    assert fit_rejection(logits, labels, 0.05, "msp").score == "msp"
    few = fit_rejection(logits[: MIN_CORRECT_IMAGES // 2], labels[: MIN_CORRECT_IMAGES // 2], 0.05)
    assert isinstance(few, str) and f"below the {MIN_CORRECT_IMAGES} needed" in few


def test_the_open_set_report_counts_acceptances_at_the_models_own_threshold():
    known = np.array([[4.0, 0.0], [0.0, 4.0], [3.0, 0.0], [0.2, 0.0]])
    others = np.array([[0.1, 0.0], [0.0, 0.1], [5.0, 0.0]])
    threshold = float(max_softmax(np.array([[1.0, 0.0]]))[0])
    rejection = Rejection("msp", threshold, 0.05, 0.0, 4)
    found = open_set_report(known, np.array([0, 1, 0, 1]), others, rejection)
    assert found["false_acceptance_rate"] == pytest.approx(1 / 3)  # only the sure [5, 0] passes
    assert found["known_rejected"] == pytest.approx(1 / 4)  # [0.2, 0] is unsure
    assert found["correct_rejected"] == pytest.approx(0.0)  # ... and wrong
    assert 0.5 < found["auroc"]["msp"] < 1 and set(found["auroc"]) == set(SCORES)
    assert negative_energy(np.array([[0.0, 0.0]]))[0] == pytest.approx(np.log(2))
    assert open_set_report(known, np.array([0, 1, 0, 1]), others, None)["false_acceptance_rate"] == 1.0


def test_the_feature_score_is_highest_at_a_training_class_and_ignores_classes_absent_from_training():
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 1, (3, 16))
    labels = np.repeat([0, 1], 50)  # class 2 has no training images
    features = torch.from_numpy(centres[labels] + rng.normal(0, 0.1, (100, 16)))
    statistics = feature_statistics(features, labels, num_labels=3)
    assert statistics["present"].tolist() == [True, True, False]
    near, far, absent = torch.from_numpy(np.stack([centres[0], rng.normal(0, 1, 16), centres[2]]))
    scores = mahalanobis_familiarity(torch.stack([near, far, absent]), statistics)
    assert scores[0] > scores[1] and scores[0] > scores[2]
    unit = torch.nn.functional.normalize(torch.stack([near, near * 3]), dim=1)
    assert mahalanobis_familiarity(unit, statistics)[0] == pytest.approx(scores[0])  # the length does not count


def test_a_rejection_rate_outside_its_range_is_refused_at_load():
    with pytest.raises(UserError, match="rejection_rate: 0.7 is out of range"):
        build_recipe({"dataset": "x", "rejection_rate": 0.7}, "test")
    with pytest.raises(UserError, match="rejection_score"):
        build_recipe({"dataset": "x", "rejection_score": "entropy"}, "test")


def _never_trained(folder, count: int, size: int = 40) -> list:
    """Images of classes no model here was trained on: the noisy grey background alone, and yellow discs on it."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        image = Image.fromarray(rng.normal(128, 30, (size, size, 3)).clip(0, 255).astype(np.uint8))
        if index % 2:
            x, y = rng.uniform(0, size / 2, 2)
            ImageDraw.Draw(image).ellipse((x, y, x + size / 2, y + size / 2), fill=(230, 220, 40))
        paths.append(folder / f"other_{index:03d}.png")
        image.save(paths[-1])
    return paths


@pytest.mark.slow
def test_images_of_a_never_trained_class_are_answered_unknown_more_often_than_known_ones(tmp_path, capsys):
    known = make_shapes_folder(tmp_path / "known", per_class=60, size=40)
    others = _never_trained(tmp_path / "others", 40)
    out = tmp_path / "run"
    settings = {**TINY_SETTINGS, "dataset": known, "output_dir": out, "validation_fraction": 0.3}
    assert main(["train", *overrides({**settings, "test_fraction": 0.15})]) == 0

    summary = json.loads((out / "metrics.json").read_text())
    fitted = summary["unknown_rejection"]
    assert fitted["fitted"] and fitted["fitted_on"] == "validation" and fitted["score"] == "mahalanobis"
    assert (out / "familiarity.safetensors").is_file()  # the training features' statistics, beside the weights
    assert fitted["validation_images"] == summary["split_sizes"]["validation"] != summary["split_sizes"]["test"]
    stored = json.loads((out / "config.json").read_text())["unknown_rejection"]
    assert stored["threshold"] == fitted["threshold"] and stored["score"] == fitted["score"]
    assert "`unknown`" in (out / "README.md").read_text()  # the card states it

    written = tmp_path / "predictions.json"
    assert main(["predict", str(out), *map(str, others), "--output", str(written)]) == 0
    answers = [record["answer"] for record in json.loads(written.read_text())]
    printed = [line for line in capsys.readouterr().out.splitlines() if "\tunknown (familiarity " in line]
    assert len(printed) == answers.count("unknown") > 0  # the terminal says it too
    assert main(["predict", str(out), str(known), "--output", str(tmp_path / "known.json")]) == 0
    known_answers = [record["answer"] for record in json.loads((tmp_path / "known.json").read_text())]
    assert answers.count("unknown") / len(answers) > 2 * known_answers.count("unknown") / len(known_answers)

    metrics = tmp_path / "open-set.json"
    assert main(["evaluate", str(out), "--unknown", str(tmp_path / "others"), "--output", str(metrics)]) == 0
    open_set = json.loads(metrics.read_text())["unknown"]
    assert open_set["unknown_images"] == len(others) and open_set["threshold"] == fitted["threshold"]
    assert open_set["false_acceptance_rate"] == pytest.approx(1 - answers.count("unknown") / len(answers))
    assert open_set["auroc_of_score"] > 0.75


@pytest.mark.slow
def test_an_adapter_runs_unknown_threshold_holds_when_it_is_loaded_and_when_it_is_merged(tmp_path):
    known = make_shapes_folder(tmp_path / "known", per_class=60, size=40)
    base, out, merged = tmp_path / "base", tmp_path / "run", tmp_path / "merged"
    settings = {**TINY_SETTINGS, "dataset": known, "validation_fraction": 0.3}
    assert main(["train", *overrides({**settings, "output_dir": base})]) == 0  # weights for the adapter to adapt
    adapter = {"model": base, "pretrained": True, "peft_method": "lora", "lora_rank": 4, "output_dir": out}
    assert main(["train", *overrides({**settings, **adapter})]) == 0
    fitted = json.loads((out / "metrics.json").read_text())["unknown_rejection"]
    assert fitted["fitted"] and fitted["score"] in ("energy", "msp")  # a feature score needs the plain model

    assert main(["merge", str(out), str(merged)]) == 0
    for source in (out, merged):  # an adapter folder keeps no model config: the threshold comes from metrics.json
        rejection = rejection_of(load_run(source)[0])
        assert rejection is not None and (rejection.score, rejection.threshold) == (
            fitted["score"],
            fitted["threshold"],
        )
