"""Test-time flips: the final evaluation, evaluate and predict average the logits over flipped views.

The data make the flips visible: a bright bar at the top or at the bottom of the image is the class,
and the test split is made of mirrored pairs. A model that sees each image and its vertical mirror
cannot tell a pair apart, so with vertical flips exactly one image of every pair is right (accuracy
0.5), while the model alone and horizontal flips keep it high.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from PIL import Image

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.data.transforms import evaluation_views

pytestmark = pytest.mark.slow


def _bar_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Grey noise with a bright horizontal bar in the top quarter."""
    pixels = rng.integers(40, 90, (size, size), dtype=np.uint8)
    top = int(rng.integers(1, size // 4 - 2))
    left = int(rng.integers(0, size // 4))
    pixels[top : top + 3, left : left + size // 2 + int(rng.integers(0, size // 4))] = 230
    return pixels


def _save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert("RGB").save(path)


@pytest.fixture(scope="module")
def bars_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bars")
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("validation", 12)):
        for i in range(count):
            _save(_bar_image(rng), root / split / "top" / f"{i}.png")
            _save(np.flipud(_bar_image(rng)), root / split / "bottom" / f"{i}.png")
    for i in range(8):
        image = _bar_image(rng)
        _save(image, root / "test" / "top" / f"{i}.png")
        _save(np.flipud(image), root / "test" / "bottom" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vertical_tta_run(tmp_path_factory, bars_dir) -> Path:
    out = tmp_path_factory.mktemp("tta") / "out"
    settings = {
        **TINY_SETTINGS,
        "dataset": bars_dir,
        "output_dir": out,
        "hflip": 0.0,
        "crop_pct": 1.0,
        "crop_scale": "[0.8, 1.0]",
    }
    assert main(["train", *overrides(settings), "--test_time_flips", "vertical"]) == 0
    return out


def test_views_are_the_plain_transform_then_its_flips():
    image = Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    plain, horizontal, vertical, both = [view(image) for view in evaluation_views(_to_tensor, "both")]
    assert torch.equal(horizontal, plain.flip(-1))
    assert torch.equal(vertical, plain.flip(-2))
    assert torch.equal(both, plain.flip(-2, -1))
    assert len(evaluation_views(_to_tensor, "none")) == 1


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()


def test_final_evaluation_averages_the_flips_and_reports_the_model_alone(vertical_tta_run):
    metrics = json.loads((vertical_tta_run / "metrics.json").read_text())
    plain = metrics["without_test_time_augmentation"]
    assert metrics["test_time_flips"] == "vertical"
    assert plain["accuracy"] >= 0.9  # the model alone tells top from bottom
    # Each mirrored pair gets one averaged score, so exactly one image of every pair is right.
    assert metrics["test"]["accuracy"] == 0.5
    card = (vertical_tta_run / "README.md").read_text()
    assert "test-time augmentation" in card and f"accuracy {plain['accuracy']:.4f}" in card


def test_evaluate_uses_the_runs_flips_unless_told_otherwise(vertical_tta_run, tmp_path):
    def accuracy(*extra: str) -> float:
        path = tmp_path / "m.json"
        assert main(["evaluate", str(vertical_tta_run), "--output", str(path), *extra]) == 0
        return json.loads(path.read_text())["accuracy"]

    metrics = json.loads((vertical_tta_run / "metrics.json").read_text())
    assert accuracy() == metrics["test"]["accuracy"] == 0.5
    assert accuracy("--tta", "none") == metrics["without_test_time_augmentation"]["accuracy"]
    assert accuracy("--tta", "horizontal") >= 0.9  # a left-right mirror does not hide the bar's side


def test_predict_scores_an_image_and_its_mirror_alike_with_vertical_flips(vertical_tta_run, bars_dir, tmp_path):
    pair = [bars_dir / "test" / "top" / "0.png", bars_dir / "test" / "bottom" / "0.png"]

    def probabilities(*extra: str) -> list[dict[str, float]]:
        path = tmp_path / "p.json"
        assert main(["predict", str(vertical_tta_run), *map(str, pair), "--output", str(path), *extra]) == 0
        records = json.loads(path.read_text())
        return [{p["label"]: p["score"] for p in record["predictions"]} for record in records]

    with_flips, alone = probabilities(), probabilities("--tta", "none")
    assert with_flips[0] == pytest.approx(with_flips[1], abs=1e-5)
    assert alone[0]["top"] > 0.5 > alone[1]["top"]
