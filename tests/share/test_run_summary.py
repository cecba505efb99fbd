"""The run summary (metrics.json) as one typed record, and the model card rendered from it."""

import dataclasses
import json

import pytest

from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.share.card import build_model_card
from hf_cnn_ft.share.run_summary import COMPLETION_MARKER, RunSummary, read_summary, write_summary

pytestmark = pytest.mark.slow  # trained_run trains once per session


def test_a_run_is_written_and_read_back_whole(trained_run, tmp_path):
    stored = json.loads((trained_run / COMPLETION_MARKER).read_text())
    summary = read_summary(trained_run)
    assert summary.evaluated_on == "test" and summary.evaluation == stored["test"]
    assert summary.label_names == stored["label_names"] and summary.train_seconds == stored["train_seconds"]
    write_summary(tmp_path, summary)
    assert json.loads((tmp_path / COMPLETION_MARKER).read_text()) == stored
    assert read_summary(tmp_path) == summary


def test_an_unknown_or_missing_key_is_one_line_naming_it(trained_run, tmp_path):
    stored = json.loads((trained_run / COMPLETION_MARKER).read_text())
    (tmp_path / COMPLETION_MARKER).write_text(json.dumps({**stored, "top1": 0.5}))
    with pytest.raises(UserError, match="'top1' this version does not know"):
        read_summary(tmp_path)
    del stored["hardware"]
    (tmp_path / COMPLETION_MARKER).write_text(json.dumps(stored))
    with pytest.raises(UserError, match="lacks hardware"):
        read_summary(tmp_path)
    with pytest.raises(UserError, match="not a finished run"):
        read_summary(tmp_path / "elsewhere")


def test_findings_are_the_only_keys_added_after_the_run(trained_run):
    summary = read_summary(trained_run)
    assert summary.with_finding("search", {"best_trial": 3}).search == {"best_trial": 3}
    with pytest.raises(ValueError, match="not 'accuracy'"):
        summary.with_finding("accuracy", {})


def _card(trained_run, **finetune) -> str:
    recipe = load_recipe(trained_run / "recipe.yaml")
    recipe = dataclasses.replace(recipe, finetune=dataclasses.replace(recipe.finetune, **finetune))
    return build_model_card(recipe, read_summary(trained_run)).text


def test_the_card_spells_settings_as_the_recipe_does(trained_run):
    text = _card(trained_run)
    for enum_text in ("SchedulerType.", "OptimizerNames.", "process(es)", "IntervalStrategy."):
        assert enum_text not in text, enum_text
    recipe = load_recipe(trained_run / "recipe.yaml")
    assert f"| schedule | {recipe.training.lr_scheduler_type.value}, warmup" in text
    assert "(1 process" in text


def test_the_card_lists_the_settings_of_the_strategy_that_ran(trained_run):
    probed_only = _card(trained_run, strategy="linear_probe")
    assert "| probe |" in probed_only and "| class weights |" in probed_only
    for fine_tuning in ("| learning rate (head) |", "| schedule |", "| frozen stages |", "| BatchNorm |"):
        assert fine_tuning not in probed_only, fine_tuning
    two_phase = _card(trained_run, strategy="two_phase")
    assert "| probe |" in two_phase and "| learning rate (head) |" in two_phase
    full = _card(trained_run, strategy="full")
    assert "| probe |" not in full and "| learning rate (head) |" in full


def test_the_card_names_a_local_model_by_its_folder_not_its_path(trained_run, tmp_path):
    recipe = load_recipe(trained_run / "recipe.yaml")
    local = tmp_path / "models" / "my-resnet"
    local.mkdir(parents=True)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, model=str(local)))
    summary = dataclasses.replace(read_summary(trained_run), base_model=None)
    text = build_model_card(recipe, summary).text
    title = next(line for line in text.splitlines() if line.startswith("# "))
    assert "`my-resnet`" in title and str(tmp_path) not in title


def test_a_summary_without_its_evaluated_report_is_refused():
    with pytest.raises(UserError, match="names no evaluated split"):
        RunSummary.from_json({"evaluated_on": "test"})
