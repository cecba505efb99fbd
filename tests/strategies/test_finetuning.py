"""Stages, freezing, frozen BatchNorm and the linear-probe strategy."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, overrides
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification, TrainerCallback, set_seed

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.sections import ModelArguments
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.models.anatomy import stages
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.strategies.class_balance import class_loss_weights
from hf_cnn_ft.strategies.freezing import apply_freezing, frozen_stage_names

LABELS = ["a", "b", "c"]


def test_timm_stages_run_from_stem_to_head():
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    groups = stages(model)
    names = list(groups)
    assert names[0] == "stem" and names[-1] == "head" and len(names) >= 4
    assert groups["head"] == ["timm_model.fc.bias", "timm_model.fc.weight"]
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


def test_native_transformers_stages(tmp_path):
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1])
    ResNetForImageClassification(config).save_pretrained(tmp_path / "r")
    model, _ = build_model(ModelArguments(model=str(tmp_path / "r")), LABELS)
    groups = stages(model)
    assert list(groups) == ["stem", "stage1", "stage2", "stage3", "head"]
    assert all("embedder" in n for n in groups["stem"])
    assert all(".stages.1." in n for n in groups["stage2"])


def test_frozen_stages_and_their_batchnorm_do_not_change_in_train_mode():
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False, zero_init_head=False), LABELS)
    frozen = frozen_stage_names(model, "2")
    apply_freezing(model, frozen, "frozen_in_frozen_stages")
    frozen_names = {n for s in frozen for n in stages(model)[s]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()  # what the Trainer does every step
    for _ in range(3):
        loss = model(pixel_values=torch.randn(8, 3, 32, 32), labels=torch.randint(0, 3, (8,))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    frozen_modules = {n.rsplit(".", 1)[0] for n in frozen_names}
    for key, value in after.items():
        if key.rsplit(".", 1)[0] in frozen_modules:
            assert torch.equal(value, before[key]), f"{key} changed although frozen"
    assert not torch.equal(after["timm_model.layer4.0.conv1.weight"], before["timm_model.layer4.0.conv1.weight"])
    assert not torch.equal(
        after["timm_model.layer4.0.bn1.running_mean"], before["timm_model.layer4.0.bn1.running_mean"]
    )


def test_freezing_more_stages_than_the_model_has_is_a_clear_error():
    # A bad format (freeze: some) fails at load: tests/config/test_recipe_checks.py.
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    with pytest.raises(UserError, match="would freeze the head too"):
        frozen_stage_names(model, "99")


def test_unknown_strategy_is_one_clear_line(tmp_path, shapes_dir, capsys):
    code = main(
        [
            "train",
            *overrides(
                {**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": tmp_path / "o", "strategy": "gradual_magic"}
            ),
        ]
    )
    assert code == 2
    assert "finetune.strategy: 'gradual_magic' is not one of full, linear_probe, two_phase" in capsys.readouterr().err


@pytest.mark.slow
def test_linear_probe_trains_only_the_head(tmp_path, shapes_dir):
    out = tmp_path / "out"
    settings = {
        **TINY_SETTINGS,
        "dataset": shapes_dir,
        "output_dir": out,
        "strategy": "linear_probe",
        "head_epochs": 30,
        "head_learning_rate": 0.05,
        "zero_init_head": True,
    }
    assert main(["train", *overrides(settings)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["linear_probe"]["epoch"] == 30 and metrics["epochs_trained"] == 0
    assert (out / "linear_probe_curves.png").is_file()
    trained = load_file(str(out / "model.safetensors"))
    # Same seed, same random init: every backbone tensor is unchanged, only the head learnt.
    set_seed(42)
    reference, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    original = {k.removeprefix("timm_model."): v for k, v in reference.state_dict().items()}
    for key, value in trained.items():
        if key.startswith("fc."):
            assert torch.count_nonzero(value) > 0
        else:
            assert torch.equal(value, original[key]), key


def test_inspect_prints_the_stages_with_parameter_counts(capsys):
    assert main(["inspect", "test_convnext"]) == 0
    out = capsys.readouterr().out
    assert "0  stem" in out and "head" in out and "parameters" in out
    assert "head: replaced by one for your classes" in out


def test_inspect_on_a_run_directory_shows_the_runs_own_head(trained_run, capsys):
    assert main(["inspect", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "head: 3 classes (blue_triangle, green_square, red_disc)" in out


def test_auto_class_weights_are_normalised_inverse_frequencies():
    weights = class_loss_weights("auto", [0, 0, 0, 1], ["common", "rare"])
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    assert float((weights * torch.tensor([3.0, 1.0])).sum()) == pytest.approx(4.0)  # mean weight per image is 1
    explicit = class_loss_weights({"rare": 5}, [0, 1], ["common", "rare"])
    torch.testing.assert_close(explicit, torch.tensor([1.0, 5.0]))
    with pytest.raises(UserError, match="unknown classes"):
        class_loss_weights({"rarest": 5}, [0, 1], ["common", "rare"])


def test_class_weights_change_the_trainers_loss(tmp_path):
    from hf_cnn_ft.config.training_arguments import TrainArguments
    from hf_cnn_ft.training.trainer import FineTuneTrainer

    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False, zero_init_head=False), LABELS)
    inputs = {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 0, 1, 2])}
    args = TrainArguments(
        output_dir=str(tmp_path), eval_strategy="no", save_strategy="no", load_best_model_at_end=False
    )
    plain = FineTuneTrainer(model=model, args=args).compute_loss(model, dict(inputs))
    weighted = FineTuneTrainer(model=model, args=args, loss_weights=torch.tensor([1.0, 1.0, 10.0])).compute_loss(
        model, dict(inputs)
    )
    assert not torch.isclose(plain, weighted)


@pytest.mark.parametrize(
    "settings, bn",
    [
        ({"pretrained": True}, "frozen"),  # pretrained statistics stay
        ({"pretrained": False}, "train"),  # a random start must learn its own
        ({"pretrained": True, "peft_method": "lora"}, "train"),  # an adapter trains BatchNorm beside it
        ({"pretrained": True, "bn": "frozen_in_frozen_stages"}, "frozen_in_frozen_stages"),
    ],
)
def test_batchnorm_auto_is_settled_once_when_the_recipe_loads(settings, bn):
    from hf_cnn_ft.config.recipe import build_recipe

    recipe = build_recipe({"dataset": "d", "model": "resnet18", "output_dir": "o", **settings})
    assert recipe.finetune.bn == bn


@pytest.mark.parametrize("spelled, settled", [(0, "none"), ("", "none"), ("Backbone", "backbone"), (2, "2")])
def test_freeze_is_spelled_one_way_once_loaded(spelled, settled):
    from hf_cnn_ft.config.recipe import build_recipe

    recipe = build_recipe(
        {"dataset": "d", "model": "resnet18", "output_dir": "o", "freeze": spelled, "unfreeze": "milestones",
         "unfreeze_milestones": {"3": spelled, 5: "None"}}
    )  # fmt: skip
    assert recipe.finetune.freeze == settled and recipe.finetune.unfreeze_milestones == {3: settled, 5: "none"}


def test_gradual_unfreezing_never_thaws_the_stages_freeze_names(tmp_path, shapes_dir):
    from hf_cnn_ft.config.recipe import build_recipe
    from hf_cnn_ft.strategies.unfreezing import build_plan

    model, _ = build_model(ModelArguments(model="resnet18", pretrained=False), ["a", "b", "c"])
    backbone = list(stages(model))[:-1]
    recipe = build_recipe({"dataset": "d", "model": "resnet18", "output_dir": "o", "strategy": "gradual"})
    plan = build_plan(model, recipe.finetune, 10)
    assert plan.frozen_at(0) == backbone[:-1] and plan.frozen_at(9) == []
    kept = build_recipe({"dataset": "d", "model": "resnet18", "output_dir": "o", "strategy": "gradual", "freeze": 2})
    plan = build_plan(model, kept.finetune, 10)
    assert plan.frozen_at(0) == backbone[:-1] and plan.frozen_at(9) == backbone[:2]


def test_optimizer_groups_carry_per_stage_learning_rates_and_no_decay_on_norms(tmp_path, shapes_dir):
    from hf_cnn_ft.config.training_arguments import TrainArguments
    from hf_cnn_ft.training.trainer import FineTuneTrainer

    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    apply_freezing(model, frozen_stage_names(model, "1"), "frozen_in_frozen_stages")
    args = TrainArguments(
        output_dir=str(tmp_path),
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        learning_rate=1e-2,
        weight_decay=0.05,
    )
    trainer = FineTuneTrainer(model=model, args=args, backbone_lr_multiplier=0.5, lr_decay=0.7)
    optimizer = trainer.create_optimizer()
    by_stage = {}
    for group in optimizer.param_groups:
        by_stage.setdefault(group["stage"], []).append(group)
    names = list(stages(model))
    assert "stem" not in by_stage  # frozen: not in the optimizer at all
    assert all(g["lr"] == pytest.approx(1e-2) for g in by_stage["head"])
    for depth, stage in enumerate(reversed(names[1:-1]), start=1):
        assert all(g["lr"] == pytest.approx(1e-2 * 0.5 * 0.7**depth) for g in by_stage[stage]), stage
    for group in optimizer.param_groups:
        assert group["weight_decay"] == (0.05 if group["params"][0].ndim > 1 else 0.0)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}


def test_cached_features_train_the_same_head_as_running_the_backbone(shapes_dir):
    from hf_cnn_ft.config.sections import DataArguments, FinetuneArguments
    from hf_cnn_ft.data.loading import load_image_data
    from hf_cnn_ft.data.transforms import eval_transform
    from hf_cnn_ft.models.anatomy import head_linear
    from hf_cnn_ft.strategies.probe import BackboneFeatures, extract_features, train_head

    data = load_image_data(DataArguments(dataset=str(shapes_dir)))
    model, data_config = build_model(ModelArguments(model="test_resnet", pretrained=False, image_size=32), LABELS)
    transform = eval_transform(data_config)
    train = data.splits["train"]
    args = FinetuneArguments(head_epochs=3, head_batch_size=16, head_learning_rate=0.05)
    head = head_linear(model.timm_model, 3)
    start = {k: v.clone() for k, v in head.state_dict().items()}

    cached, labels = extract_features(model, train, transform)
    history_cached = train_head(head, cached, labels, args, seed=7)
    weights_cached = {k: v.clone() for k, v in head.state_dict().items()}

    head.load_state_dict(start)
    history_uncached = train_head(head, BackboneFeatures(model, train, transform), labels, args, seed=7)
    for key, value in head.state_dict().items():
        torch.testing.assert_close(value, weights_cached[key], atol=1e-5, rtol=1e-4)
    assert [h["loss"] for h in history_uncached] == pytest.approx([h["loss"] for h in history_cached], rel=1e-4)


def _plain_trainer(tmp_path, model, **kwargs):
    from hf_cnn_ft.config.training_arguments import TrainArguments
    from hf_cnn_ft.training.trainer import FineTuneTrainer

    args = TrainArguments(
        output_dir=str(tmp_path), eval_strategy="no", save_strategy="no", load_best_model_at_end=False
    )
    return FineTuneTrainer(model=model, args=args, **kwargs)


def test_l2sp_penalty_is_zero_at_the_start_and_grows_as_the_backbone_moves(tmp_path):
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False, zero_init_head=False), LABELS)
    trainer = _plain_trainer(tmp_path, model, l2sp_alpha=0.1)
    assert float(trainer.l2sp_penalty().detach()) == 0.0
    assert not any(name.startswith("timm_model.fc.") for name in trainer.l2sp_anchor)  # the new head is free
    with torch.no_grad():
        model.timm_model.layer1[0].conv1.weight.add_(0.01)
    small = float(trainer.l2sp_penalty().detach())
    with torch.no_grad():
        model.timm_model.layer1[0].conv1.weight.add_(0.01)
        model.timm_model.fc.weight.add_(5.0)  # moving the head costs nothing
    assert 0 < small < float(trainer.l2sp_penalty().detach())
    expected = 0.5 * 0.1 * model.timm_model.layer1[0].conv1.weight.numel() * 0.02**2
    assert float(trainer.l2sp_penalty().detach()) == pytest.approx(expected, rel=1e-3)
    inputs = {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 0])}
    model.train()
    with_penalty = trainer.compute_loss(model, dict(inputs))
    plain = _plain_trainer(tmp_path, model).compute_loss(model, dict(inputs))
    assert float((with_penalty - plain).detach()) == pytest.approx(expected, rel=1e-3)


def test_balanced_sampler_draws_every_class_equally_often(tmp_path):
    import datasets as hf_datasets

    from hf_cnn_ft.strategies.class_balance import balanced_sample_weights

    labels = [0] * 90 + [1] * 9 + [2] * 1
    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False), LABELS)
    trainer = _plain_trainer(tmp_path, model, sample_weights=balanced_sample_weights(labels, 3))
    trainer.train_dataset = hf_datasets.Dataset.from_dict({"label": labels})
    sampler = trainer._get_train_sampler()  # one per training run; each epoch draws afresh
    draws = [labels[i] for _ in range(30) for i in sampler]
    shares = torch.bincount(torch.tensor(draws), minlength=3).float() / len(draws)
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3), atol=0.03, rtol=0)


def test_lr_find_sweeps_the_rate_and_suggests_one(tmp_path, shapes_dir, capsys):
    import json as json_module

    settings = {**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": tmp_path / "out", "strategy": "full"}
    assert main(["lr-find", *overrides(settings), "--steps", "20", "--start-lr", "1e-5", "--end-lr", "10"]) == 0
    result = json_module.loads((tmp_path / "out" / "lr_find.json").read_text())
    rates = result["learning_rates"]
    assert rates[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(rates, rates[1:]))
    assert len(result["losses"]) == len(rates) <= 20
    assert 1e-5 <= result["suggested_learning_rate"] <= rates[-1]
    assert (tmp_path / "out" / "lr_find.png").is_file()
    assert "suggested learning rate" in capsys.readouterr().out


def test_mixup_and_cutmix_mix_training_batches_only(tmp_path):
    from hf_cnn_ft.config.sections import AugmentArguments
    from hf_cnn_ft.data.transforms import batch_mixer

    mixer = batch_mixer(AugmentArguments(mixup_alpha=0.4, cutmix_alpha=1.0), num_classes=3)
    pixels, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, soft = mixer(pixels, labels)
    assert soft.shape == (6, 3) and torch.allclose(soft.sum(1), torch.ones(6))
    assert not torch.equal(mixed, pixels)
    assert batch_mixer(AugmentArguments(), 3) is None

    model, _ = build_model(ModelArguments(model="test_resnet", pretrained=False, zero_init_head=False), LABELS)
    inputs = {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 0])}
    mixing = _plain_trainer(tmp_path, model, batch_mixer=batch_mixer(AugmentArguments(mixup_alpha=1.0), 3))
    plain = _plain_trainer(tmp_path, model)
    model.eval()
    torch.testing.assert_close(mixing.compute_loss(model, dict(inputs)), plain.compute_loss(model, dict(inputs)))
    model.train()
    torch.manual_seed(0)
    assert not torch.isclose(mixing.compute_loss(model, dict(inputs)), plain.compute_loss(model, dict(inputs)))


def test_bn_adapt_replaces_the_statistics_with_those_of_the_training_images(shapes_dir):
    from hf_cnn_ft.config.sections import DataArguments
    from hf_cnn_ft.data.loading import load_image_data
    from hf_cnn_ft.data.transforms import eval_transform
    from hf_cnn_ft.strategies.freezing import adapt_batchnorm

    data = load_image_data(DataArguments(dataset=str(shapes_dir)))
    model, data_config = build_model(
        ModelArguments(model="test_resnet", pretrained=False, image_size=32), ["a", "b", "c"]
    )
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    weights_before = {k: v.clone() for k, v in model.named_parameters()}
    inputs = []
    handle = first_bn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
    transform = eval_transform(data_config)
    adapt_batchnorm(model, data.splits["train"], transform, batch_size=16)
    handle.remove()

    # What the first BatchNorm layer saw: the whole training split, once; its statistics are the
    # average over those batches (momentum None), as in torch.optim.swa_utils.update_bn.
    assert sum(len(batch) for batch in inputs) == len(data.splits["train"])
    batch_means = torch.stack([b.mean(dim=(0, 2, 3)) for b in inputs])
    batch_vars = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in inputs])
    torch.testing.assert_close(first_bn.running_mean, batch_means.mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(first_bn.running_var, batch_vars.mean(0), rtol=1e-4, atol=1e-6)
    assert first_bn.momentum == 0.1 and model.training
    assert all(torch.equal(v, weights_before[k]) for k, v in model.named_parameters())  # statistics only


class OptimizerGroups(TrainerCallback):
    """Records, when training starts, what each optimizer parameter group holds and its rate ratio."""

    def __init__(self) -> None:
        self.groups: list[tuple] = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        names = {id(p): n for n, p in model.named_parameters()}
        rates = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]  # before any schedule
        self.groups = [
            (group.get("stage"), round(rate / max(rates), 6), tuple(sorted(names[id(p)] for p in group["params"])))
            for group, rate in zip(optimizer.param_groups, rates)
        ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "phase", [{"freeze": "backbone", "strategy": "full"}, {"mixup_alpha": 0.4, "lr_decay": 0.5, "strategy": "full"}]
)
def test_lr_find_trains_exactly_the_parameter_groups_the_run_trains(tmp_path, shapes_dir, phase):
    from hf_cnn_ft.config.recipe import Recipe
    from hf_cnn_ft.training.lr_find import find_learning_rate
    from hf_cnn_ft.training.train import train

    settings = {**TINY_SETTINGS, "num_train_epochs": 1, "dataset": str(shapes_dir), **phase}
    in_run, in_sweep = OptimizerGroups(), OptimizerGroups()
    train(Recipe.from_dict({**settings, "output_dir": str(tmp_path / "run")}), callbacks=[in_run])
    result = find_learning_rate(
        Recipe.from_dict({**settings, "output_dir": str(tmp_path / "sweep")}), 8, 1e-4, 1.0, callbacks=[in_sweep]
    )
    assert in_run.groups and in_sweep.groups == in_run.groups
    if "freeze" in phase:
        assert {stage for stage, _, _ in in_run.groups} == {"head"}
    else:
        assert len({ratio for _, ratio, _ in in_run.groups}) > 2  # per-stage rates, kept in ratio by the sweep
    assert len(result.losses) == len(result.learning_rates) >= 5


@pytest.mark.slow
def test_a_collapsing_fine_tuning_phase_ends_with_the_probed_model(trained_run, shapes_dir, tmp_path, caplog):
    """Features that a probe separates perfectly, then fine-tuning at a learning rate that wrecks them."""
    settings = {**TINY_SETTINGS, "model": trained_run, "pretrained": True, "num_train_epochs": 2, "learning_rate": 30}
    settings.update(dataset=shapes_dir, top_losses=0, correct_per_class=0)

    def run(name: str, *extra: str) -> tuple[dict, float]:
        out = tmp_path / name
        assert main(["train", *overrides({**settings, "output_dir": out}), *extra]) == 0
        evaluated = tmp_path / f"{name}.json"
        assert main(["evaluate", str(out), "--split", "validation", "--output", str(evaluated)]) == 0
        return json.loads((out / "metrics.json").read_text()), json.loads(evaluated.read_text())["accuracy"]

    summary, saved_accuracy = run("guarded")
    check = summary["probe_candidate"]
    assert check["kept"] == "probe" and check["probe"] > check["fine_tuned"] + 0.3
    assert saved_accuracy == pytest.approx(check["probe"])  # the saved model is the probed one
    assert "fine-tuning did not clearly beat the linear probe on validation" in caplog.text
    card = (tmp_path / "guarded" / "README.md").read_text()
    assert f"(accuracy {check['fine_tuned']:.3f} against {check['probe']:.3f}), so the probed model was kept" in card
    assert not (tmp_path / "guarded" / "probed_start.safetensors").exists()

    unguarded, unguarded_accuracy = run("unguarded", "--probe_candidate", "false")
    assert unguarded["probe_candidate"] is None and unguarded_accuracy == pytest.approx(check["fine_tuned"])


def test_the_run_records_why_it_kept_the_model_it_kept(trained_run):
    check = json.loads((trained_run / "metrics.json").read_text())["probe_candidate"]
    clearly = check["fine_tuned"] > check["probe"] and check["accuracy_gain"] > check["accuracy_gain_standard_error"]
    assert check["kept"] == ("fine_tuned" if clearly else "probe")


def test_a_fine_tuned_model_within_the_noise_of_its_probe_gives_way_to_the_probe():
    """Six images more right and four more wrong out of sixty is not evidence; twelve more right and none worse is."""
    from torch import nn

    from hf_cnn_ft.strategies.wise import keep_the_better, snapshot

    model = nn.Linear(2, 2)
    start = snapshot(model)
    probe_correct = np.array([True] * 40 + [False] * 20)

    def validation(more_right: int, more_wrong: int):
        def validate():
            if torch.equal(model.weight, start["weight"]):
                return float(probe_correct.mean()), probe_correct
            tuned = probe_correct.copy()
            tuned[40 : 40 + more_right] = True
            tuned[:more_wrong] = False
            return float(tuned.mean()), tuned

        return validate

    for (right, wrong), kept in (((6, 4), "probe"), ((12, 0), "fine_tuned")):
        with torch.no_grad():
            model.weight.copy_(start["weight"] + 1.0)  # "fine-tuned": other weights
        check = keep_the_better(model, start, validation(right, wrong), "accuracy", True)
        assert check["kept"] == kept, check
        assert torch.equal(model.weight, start["weight"]) == (kept == "probe")
