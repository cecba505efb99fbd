"""Signal beyond the labels: the unlabeled pool, an ensemble teacher distilled into the saved model, Co-Tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from datasets import Image as ImageFeature
from PIL import Image

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.config.sections import ModelArguments
from hf_cnn_ft.data.loading import load_image_data
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.models.io import save_model
from hf_cnn_ft.strategies.co_tuning import class_relationship

PROBE = {**TINY_SETTINGS, "strategy": "linear_probe", "top_losses": 0, "correct_per_class": 0, "head_epochs": 20}


def _paths(split) -> list[str]:
    return [row["path"] for row in split.cast_column("image", ImageFeature(decode=False))["image"]]


def test_the_pool_loses_copies_of_evaluated_images_and_reports_unreadable_ones(shapes_dir, tmp_path):
    recipe = load_recipe(None, values={"dataset": shapes_dir, "output_dir": tmp_path / "x"})
    test_images = _paths(load_image_data(recipe.data).splits["test"])
    pool = tmp_path / "pool"
    pool.mkdir()
    for index, path in enumerate(test_images[:3]):  # copies of test images: never learnt from
        shutil.copy(path, pool / f"copy-{index}{Path(path).suffix}")
    for index in range(5):
        Image.new("RGB", (40, 40), (10 * index, 200, 30)).save(pool / f"new-{index}.png")
    (pool / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    settings = {**PROBE, "dataset": shapes_dir, "output_dir": out, "unlabeled": pool, "unlabeled_method": "fixmatch"}
    assert main(["train", *overrides(settings)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["signal"]["unlabeled"]["images"] == 5
    assert summary["duplicates"]["across"]["unlabeled"] == 3
    assert any(row["split"] == "unlabeled" and row["path"].endswith("broken.png") for row in summary["skipped"])
    assert "unlabeled\t" in (out / "skipped_images.tsv").read_text()
    kept = summary["signal"]["probe_kept"]
    assert kept["kept"] in ("with the extra signal", "labels alone") and len(kept["validation_accuracy"]) == 2


def test_labels_per_class_keeps_that_many_labels_and_pools_the_rest_of_the_training_split(shapes_dir, tmp_path):
    values = {"dataset": shapes_dir, "output_dir": tmp_path / "x"}
    whole = load_image_data(load_recipe(None, values=values).data)
    few = load_image_data(load_recipe(None, values={**values, "labels_per_class": 4}).data)
    assert few.class_counts("train") == {name: 4 for name in whole.label_names}
    assert len(few.unlabeled) == len(whole.splits["train"]) - 12
    assert set(_paths(few.unlabeled)) == set(_paths(whole.splits["train"])) - set(_paths(few.splits["train"]))
    for split in ("validation", "test"):  # the evaluated images never join the pool
        assert _paths(few.splits[split]) == _paths(whole.splits[split])


def test_cross_validation_folds_cover_training_and_validation_once(shapes_dir, tmp_path):
    values = {"dataset": shapes_dir, "output_dir": tmp_path / "x", "folds": 3}
    folds = [load_image_data(load_recipe(None, values={**values, "fold": k}).data) for k in range(3)]
    held = [set(_paths(data.splits["validation"])) for data in folds]
    everything = set(_paths(folds[0].splits["train"])) | held[0]
    assert held[0] | held[1] | held[2] == everything and sum(map(len, held)) == len(everything)
    assert all(not (held[i] & held[j]) for i in range(3) for j in range(i + 1, 3))
    assert all(_paths(data.splits["test"]) == _paths(folds[0].splits["test"]) for data in folds)


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"unlabeled_method": "fixmatch"}, "signal.unlabeled_method: fixmatch learns from unlabeled images"),
        ({"labels_per_class": 3, "strategy": "full"}, "has no probe phase"),
        ({"teachers": "[{t}/no-such-model]"}, "signal.teachers"),
        ({"labels_per_class": 3, "probe_stages": 1}, "finetune.probe_stages"),
        ({"co_tuning_weight": 1.0, "strategy": "linear_probe"}, "signal.co_tuning_weight"),
        ({"co_tuning_weight": 1.0, "strategy": "two_phase", "global_pool": "catavgmax"}, "gives them twice"),
        ({"folds": 3, "fold": 3}, "data.fold: 3"),
        ({"confidence_threshold": 1.5}, "signal.confidence_threshold"),
    ],
)
def test_signal_settings_that_cannot_work_are_one_line_at_load(shapes_dir, tmp_path, capsys, settings, says):
    values = {k: v.replace("{t}", str(tmp_path)) if isinstance(v, str) else v for k, v in settings.items()}
    argv = ["train", *overrides({**PROBE, "dataset": shapes_dir, "output_dir": tmp_path / "out", **values})]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and says in error[0], error
    assert not (tmp_path / "out").exists()


def _tiny_model_dir(folder: Path, architecture: str = "test_resnet", classes: int = 10) -> Path:
    """A saved model with a head of its own, standing in for pretrained weights with their source head."""
    model, data_config = build_model(
        ModelArguments(model=architecture, pretrained=False, image_size=32), [f"c{i}" for i in range(classes)]
    )
    save_model(model, data_config, folder)
    return folder


def test_a_backbone_without_a_source_head_is_one_line_for_co_tuning(shapes_dir, tmp_path, capsys):
    settings = {**PROBE, "strategy": "two_phase", "co_tuning_weight": 1.0, "num_train_epochs": 1}
    settings.update(dataset=shapes_dir, output_dir=tmp_path / "out")  # test_resnet, random: no pretrained head
    assert main(["train", *overrides(settings)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "has no pretrained classifier" in error[0]


def test_co_tuning_learns_its_class_relationship_from_training_images_only(shapes_dir, tmp_path, monkeypatch):
    import hf_cnn_ft.training.prepare as prepare
    from hf_cnn_ft.data.dataset import split_labels

    seen = []
    original = prepare.fit_co_tuning

    def spy(model, source_head, train_split, *args):
        seen.append(split_labels(train_split))
        return original(model, source_head, train_split, *args)

    monkeypatch.setattr(prepare, "fit_co_tuning", spy)
    base = _tiny_model_dir(tmp_path / "base")
    out = tmp_path / "out"
    settings = {**PROBE, "strategy": "two_phase", "co_tuning_weight": 1.0, "num_train_epochs": 2}
    settings.update(dataset=shapes_dir, output_dir=out, model=base, pretrained=True)
    assert main(["train", *overrides(settings)]) == 0
    data = load_image_data(load_recipe(out / "recipe.yaml").data)
    assert seen == [split_labels(data.splits["train"])]  # once, on the training images, in their order
    assert len(seen[0]) != len(data.splits["validation"]) + len(data.splits["train"])


def test_the_class_relationship_is_the_mean_source_distribution_per_class():
    source = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    relationship = class_relationship(source, torch.tensor([0, 0, 1]), classes=3)
    assert torch.allclose(relationship[0], torch.tensor([0.6, 0.3, 0.1]))
    assert torch.allclose(relationship[1], torch.tensor([0.1, 0.1, 0.8]))
    assert torch.allclose(relationship[2], source.mean(0))  # a class with no training image: the overall mean


@pytest.mark.slow
def test_the_distilled_student_is_a_plain_model_that_pipeline_and_timm_load(shapes_dir, tmp_path):
    import timm
    from transformers import pipeline

    from hf_cnn_ft.evaluation.predict import predict_files

    teacher = _tiny_model_dir(tmp_path / "teacher", "test_convnext")
    out = tmp_path / "student"
    settings = {**PROBE, "strategy": "two_phase", "num_train_epochs": 2, "teachers": f"[{teacher}]"}
    settings.update(dataset=shapes_dir, output_dir=out, labels_per_class=8)
    assert main(["train", *overrides(settings)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["signal"]["teacher"]["backbones"][1] == str(teacher)
    assert 0 <= summary["signal"]["teacher"]["validation_accuracy"] <= 1
    assert not any(p.name.startswith("teacher") for p in out.iterdir())  # nothing of the teacher is saved

    image = next(shapes_dir.rglob("*.png"))
    ours = predict_files(out, [image], top_k=3)[0]
    theirs = pipeline("image-classification", model=str(out))(Image.open(image).convert("RGB"), top_k=3)
    assert [row["label"] for row in theirs] == ours.labels
    assert [row["score"] for row in theirs] == pytest.approx(ours.scores, abs=1e-5)
    with_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=with_timm))
    with torch.no_grad():
        probabilities = with_timm(transform(Image.open(image).convert("RGB"))[None]).softmax(-1)[0]
    assert probabilities.max().item() == pytest.approx(ours.scores[0], abs=1e-5)


def _two_clusters(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes as clusters of cached features around x = -2 and x = +2, with a gap between them at x = 0."""
    labels = torch.arange(count) % 2
    centres = torch.where(labels == 0, -2.0, 2.0)
    x = centres + 0.7 * torch.randn(count, generator=generator)
    return torch.stack([x, torch.randn(count, generator=generator)], dim=1), labels


@pytest.mark.parametrize("method", ["fixmatch", "flexmatch"])
def test_unlabeled_images_that_show_the_gap_between_classes_move_the_probe_into_it(method):
    from hf_cnn_ft.config.sections import FinetuneArguments
    from hf_cnn_ft.config.signal import SignalArguments
    from hf_cnn_ft.strategies.probe import ProbeHooks, train_head
    from hf_cnn_ft.strategies.semi_supervised import Pool, ProbeObjective

    generator = torch.Generator().manual_seed(0)
    # Three labels per class, all far to the right of the gap: the labels alone put the boundary at x = 1.5.
    labelled = torch.tensor([[-0.5, 1.0], [-0.6, -1.0], [-0.4, 0.0], [3.6, 1.0], [3.4, -1.0], [3.5, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    unlabeled, _ = _two_clusters(400, generator)  # the pool shows where the classes really part
    strong = torch.stack([unlabeled + 0.3 * torch.randn(unlabeled.shape, generator=generator) for _ in range(2)])
    test_images, test_labels = _two_clusters(1000, generator)
    finetune = FinetuneArguments(head_epochs=60, head_batch_size=6, head_learning_rate=0.05)

    def accuracy(head: torch.nn.Module) -> float:
        with torch.no_grad():
            return float((head(test_images).argmax(1) == test_labels).float().mean())

    torch.manual_seed(0)
    alone = torch.nn.Linear(2, 2)
    train_head(alone, labelled, labels, finetune, seed=0)
    torch.manual_seed(0)
    with_pool = torch.nn.Linear(2, 2)
    objective = ProbeObjective(SignalArguments(unlabeled_method=method), labels, 2, None, 0, Pool(unlabeled, strong))
    hooks = ProbeHooks(
        epoch_begin=lambda: objective.epoch_begin(with_pool),
        objective=lambda logits, batch: objective(with_pool, logits, batch),
        rows_per_epoch=objective.rows_per_epoch(),
    )
    train_head(with_pool, labelled, labels, finetune, 0, None, None, hooks)
    assert accuracy(with_pool) >= accuracy(alone) + 0.03, (accuracy(alone), accuracy(with_pool))
