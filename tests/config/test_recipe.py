from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from hf_cnn_ft.config.keys import KEY_OWNERS
from hf_cnn_ft.config.reading import parse_overrides
from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.config.writing import recipe_to_yaml
from hf_cnn_ft.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_sections_map_onto_dataclasses_and_training_arguments(tmp_path):
    path = write(
        tmp_path,
        """
data: {dataset: some/folder, validation_fraction: 0.2}
model: {model: resnet18, image_size: 160}
augment: {crop_scale: [0.5, 1.0], auto_augment: randaugment}
training: {learning_rate: 3.0e-4, num_train_epochs: 4, output_dir: out}
""",
    )
    recipe = load_recipe(path)
    assert recipe.data.dataset == "some/folder" and recipe.data.validation_fraction == 0.2
    assert recipe.model.model == "resnet18" and recipe.model.image_size == 160
    assert recipe.augment.crop_scale == (0.5, 1.0)
    assert recipe.training.learning_rate == 3e-4 and recipe.training.num_train_epochs == 4
    # Fine-tuning defaults that differ from TrainingArguments'.
    assert recipe.training.remove_unused_columns is False
    assert recipe.training.load_best_model_at_end is True


def test_command_line_overrides_win_and_are_typed(tmp_path):
    path = write(tmp_path, "training: {learning_rate: 0.1}\ndata: {dataset: d}\nmodel: {model: m}\n")
    recipe = load_recipe(
        path,
        [
            "--learning_rate",
            "3e-4",
            "--model.image_size=96",
            "--hflip",
            "0",
            "--crop_scale",
            "0.3,1",
            "--gradient_checkpointing",
        ],
    )
    assert recipe.training.learning_rate == pytest.approx(3e-4)
    assert recipe.model.image_size == 96
    assert recipe.augment.hflip == 0.0
    assert recipe.augment.crop_scale == (0.3, 1.0)
    assert recipe.training.gradient_checkpointing is True


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "training: {learning_rat: 0.1}",
            "unknown key 'learning_rat' in section 'training'; did you mean 'learning_rate'?",
        ),
        ("modle: {model: x}", "unknown key 'modle'; did you mean 'model'?"),
        ("data: {learning_rate: 0.1}", "'learning_rate' belongs in section 'training'"),
        ("training: {num_train_epochs: lots}", "training.num_train_epochs: expected a number, got 'lots'"),
        ("data: [1, 2]", "section 'data' must be a mapping"),
        ("- just\n- a list", "a recipe must be a mapping"),
        ("data: {dataset: [unclosed", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_key_and_the_fix(tmp_path, text, message):
    with pytest.raises(UserError, match=None) as info:
        load_recipe(write(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path / "recipe.yaml") in str(info.value) or "recipe" in str(info.value)


def test_unknown_override_suggests_the_closest_key():
    with pytest.raises(UserError) as info:
        parse_overrides(["--lerning_rate", "1e-3"])
    assert "unknown override --lerning_rate; did you mean 'learning_rate'?" in str(info.value)


def test_saved_recipe_is_fully_resolved_round_trips_and_holds_no_invocation_settings(tmp_path):
    output_dir = tmp_path / "o"
    (output_dir / "checkpoint-3").mkdir(parents=True)  # a complete checkpoint, for --resume to find
    (output_dir / "checkpoint-3" / "trainer_state.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(output_dir / "checkpoint-3" / "model.safetensors"))
    path = write(
        tmp_path,
        f"data: {{dataset: d}}\nmodel: {{model: m}}\ntraining: {{output_dir: {output_dir}}}\n",
    )
    recipe = load_recipe(
        path, ["--learning_rate", "5e-4", "--resume_from_checkpoint", "latest", "--overwrite_output_dir"]
    )
    text = recipe_to_yaml(recipe)
    assert "token" not in text  # a token is refused when the recipe loads (tests/share/test_faults.py)
    assert "resume_from_checkpoint" not in text and "overwrite" not in text
    saved = yaml.safe_load(text)["training"]
    # Resolved: the values the run used, not only the keys given (a changed default cannot change a rerun).
    assert saved["learning_rate"] == 5e-4 and saved["seed"] == 42 and saved["lr_scheduler_type"] == "cosine"
    assert saved["num_train_epochs"] == 10 and "max_grad_norm" in saved and "adam_beta2" in saved
    again = load_recipe(write(tmp_path, text))
    assert again.data == recipe.data and again.model == recipe.model and again.augment == recipe.augment
    assert yaml.safe_load(recipe_to_yaml(again)) == yaml.safe_load(text)


def test_every_key_is_unique_across_sections():
    # The flat --key override relies on it; KEY_OWNERS raises at import if two sections share a key.
    assert KEY_OWNERS["learning_rate"] == "training"
    assert KEY_OWNERS["dataset"] == "data"
    assert KEY_OWNERS["crop_scale"] == "augment"
    # Our sections' keys are declared without importing transformers: none may shadow a TrainingArguments field.
    from hf_cnn_ft.config.training_arguments import training_fields

    shadowing = {key for key, owner in KEY_OWNERS.items() if owner != "training" and key in training_fields()}
    assert not shadowing


def test_yaml_no_and_yes_stay_words_not_booleans(tmp_path):
    recipe = load_recipe(write(tmp_path, "training:\n  save_strategy: no\n  eval_strategy: no\n"), [])
    assert recipe.training.save_strategy == "no" and recipe.training.eval_strategy == "no"
    assert load_recipe(None, ["--load_best_model_at_end", "false"]).training.load_best_model_at_end is False
    assert load_recipe(None, ["--pretrained", "no"]).model.pretrained is False  # a boolean setting still reads it


def test_transformers_example_spellings_and_either_flag_style_name_the_same_keys(tmp_path):
    recipe = load_recipe(
        None,
        [
            "--model_name_or_path",
            "resnet18",
            "--dataset-name",
            "some/folder",
            "--label_column_name",
            "kind",
            "--learning-rate",
            "0.01",
            "--output_dir",
            str(tmp_path / "out"),
        ],
    )
    assert recipe.model.model == "resnet18" and recipe.data.dataset == "some/folder"
    assert recipe.data.label_column == "kind" and recipe.training.learning_rate == 0.01
    from_file = load_recipe(write(tmp_path, "model_name_or_path: resnet18\ndata: {dataset_name: some/folder}\n"))
    assert from_file.model.model == "resnet18" and from_file.data.dataset == "some/folder"
    with pytest.raises(UserError, match="'dataset_name' is another name for 'dataset'"):
        load_recipe(write(tmp_path, "data: {dataset: a/b, dataset_name: c/d}\n"))


@pytest.mark.parametrize(
    "argv, dest, value",
    [
        (["predict", "run", "a.jpg", "--top-k", "2"], "top_k", 2),
        (["predict", "run", "a.jpg", "--top_k", "2"], "top_k", 2),
        (["report", "run", "--slice-column", "site"], "slice_column", "site"),
        (["report", "run", "--top_losses", "4"], "top_losses", 4),
        (["push", "run", "me/model", "--commit_message", "m"], "commit_message", "m"),
        (["app", "run", "--share", "false"], "share", "false"),
    ],
)
def test_every_long_option_takes_dashes_or_underscores(argv, dest, value):
    from hf_cnn_ft.cli.main import _parse_recipe_verb, build_parser

    assert getattr(build_parser().parse_args(argv), dest) == value
    for spelled in ("--start-lr", "--start_lr"):
        options, extra = _parse_recipe_verb("lr-find", ["recipe.yaml", spelled, "0.001", "--seed", "3"])
        assert options.start_lr == 0.001 and extra == ["--seed", "3"]


def test_replace_builds_a_new_recipe_through_every_check(tmp_path):
    recipe = load_recipe(
        write(tmp_path, "data: {dataset: some/folder}\nmodel: {model: resnet18}\ntraining: {learning_rate: 0.01}\n"),
        ["--overwrite_output_dir", "true"],
    )
    changed = recipe.replace(model="convnext_tiny", seed=3, split_seed=2, resplit=True)
    assert changed.model.model == "convnext_tiny" and changed.training.seed == 3 and changed.data.split_seed == 2
    assert changed.training.learning_rate == 0.01 and changed.data.dataset == "some/folder"
    assert changed.training.overwrite_output_dir is True  # an invocation setting survives the copy
    assert recipe.model.model == "resnet18" and recipe.training.seed != 3  # the original is untouched
    with pytest.raises(UserError, match="validation_fraction"):
        recipe.replace(validation_fraction=1.5)
    with pytest.raises(UserError, match="unknown key 'seeds'"):
        recipe.replace(seeds=2)
