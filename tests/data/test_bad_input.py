"""Every bad input is one clear line and exit code 2, before any work, leaving nothing that looks finished.

Each case gives the command line (built from the shared image folder `d`, a scratch folder `t` and a
finished run `r`) and the words its error line must hold: the setting or file, the bad value, what to do.
`at_load` cases are settings the recipe checks refuse before any data or model work: they leave no
output directory at all.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.share.run_dir import COMPLETION_MARKER

TRAIN = ["train", "--model", "test_resnet", "--pretrained", "false", "--image_size", "32"]
FINISHED_FILES = (COMPLETION_MARKER, "model.safetensors", "README.md", "config.json")


@dataclass
class Case:
    name: str
    argv: Callable[[Path, Path, Path], list[str]]  # (image folder, scratch folder, finished run) -> argv
    says: tuple[str, ...]
    at_load: bool = True


def train(*extra: str) -> Callable[[Path, Path, Path], list[str]]:
    """`hf-cnn-ft train` on the image folder, into t/out, with `extra` settings ({t} is the scratch folder)."""
    return lambda d, t, r: [*TRAIN, "--dataset", str(d), "--output_dir", str(t / "out"), *_fill(extra, t)]


def _fill(args: tuple[str, ...], t: Path) -> list[str]:
    return [a.replace("{t}", str(t)) for a in args]


def _recipe(t: Path, text: str) -> str:
    path = t / "recipe.yaml"
    path.write_text(text)
    return str(path)


CASES = [
    # Values out of range: the setting, the value, the range to use.
    Case("negative learning rate", train("--learning_rate", "-1"), ("training.learning_rate", "-1", "use a value")),
    Case("negative epochs", train("--num_train_epochs", "-1"), ("training.num_train_epochs", "-1", "use a value")),
    Case("zero batch size", train("--per_device_train_batch_size", "0"), ("per_device_train_batch_size", "0")),
    Case("negative image size", train("--image_size", "-5"), ("model.image_size", "-5", "use a value")),
    Case("flip probability 2", train("--hflip", "2"), ("augment.hflip", "2", "[0, 1]")),
    Case("label smoothing 1.5", train("--label_smoothing_factor", "1.5"), ("label_smoothing_factor", "1.5")),
    Case("negative weight decay", train("--weight_decay", "-0.1"), ("training.weight_decay", "-0.1")),
    Case("validation fraction 1.2", train("--validation_fraction", "1.2"), ("data.validation_fraction", "1.2")),
    Case("crop_pct 0", train("--crop_pct", "0"), ("model.crop_pct", "0")),
    Case("ema decay 1", train("--ema_decay", "1"), ("finetune.ema_decay", "1")),
    Case("lora rank 0", train("--lora_rank", "0"), ("peft.lora_rank", "0")),
    Case("negative workers", train("--dataloader_num_workers", "-2"), ("dataloader_num_workers", "-2")),
    Case("gradient accumulation 0", train("--gradient_accumulation_steps", "0"), ("gradient_accumulation_steps",)),
    Case("not a number", train("--learning_rate", "fast"), ("training.learning_rate", "fast", "a number")),
    # Choices and formats: the setting, the value, the ones to use.
    Case("unknown strategy", train("--strategy", "magic"), ("finetune.strategy", "magic", "two_phase")),
    Case("unknown BatchNorm policy", train("--bn", "sometimes"), ("sometimes", "frozen_in_frozen_stages")),
    Case("bad freeze", train("--freeze", "most"), ("freeze", "most")),
    Case("bad metric", train("--metric_for_best_model", "acc"), ("metric_for_best_model", "'acc'", "accuracy")),
    Case("unknown override", train("--epochs", "3"), ("unknown override --epochs", "num_train_epochs")),
    # Files and folders: which one, and what to give instead.
    Case("missing data path", train("--dataset", "{t}/missing"), ("data path", "missing", "does not exist")),
    Case("missing folder/", train("--dataset", "no-such-photos/"), ("data path no-such-photos/", "does not exist")),
    Case("output_dir is a file", train("--output_dir", "{t}/taken.txt"), ("output_dir", "taken.txt", "is a file")),
    Case("resume without checkpoint", train("--resume"), ("--resume", "no complete checkpoint", "drop --resume")),
    Case("missing weights file", train("--weights", "{t}/w.safetensors"), ("model.weights", "w.safetensors")),
    Case("missing model folder", train("--model", "./no-such-model"), ("no-such-model", "not a model directory")),
    Case(
        "YAML typo",
        lambda d, t, r: ["train", _recipe(t, "training:\n  learnin_rate: 0.1\n")],
        ("recipe.yaml", "learnin_rate", "did you mean 'learning_rate'"),
    ),
    Case(
        "recipe is not a mapping",
        lambda d, t, r: ["train", _recipe(t, "- just\n- a list\n")],
        ("recipe.yaml", "mapping"),
    ),
    Case("missing recipe file", lambda d, t, r: ["train", str(t / "nope.yaml")], ("nope.yaml", "does not exist")),
    # Found only when the data or the model is opened: still one line, still nothing finished.
    Case("single class", train("--dataset", "{t}/one"), ("single class folder",), at_load=False),
    Case("missing label column", train("--label_column", "kind"), ("label column 'kind' not found in",), False),
    Case("unknown model", train("--model", "resnet5O"), ("unknown model 'resnet5O'",), at_load=False),
    Case("missing slice column", train("--slice_column", "site"), ("slice column 'site' not found in",), False),
    Case("negative top losses", train("--top_losses", "-1"), ("report.top_losses", "-1")),
    # The run verbs: the model is checked before the data or the images.
    Case("predict on a text file", lambda d, t, r: ["predict", str(r), _note(t)], ("note.txt", "readable image")),
    Case(
        "predict on a missing image",
        lambda d, t, r: ["predict", str(r), str(t / "gone.png")],
        ("gone.png", "does not exist"),
    ),
    Case(
        "predict into a .txt file",
        lambda d, t, r: ["predict", str(r), str(d), "--output", str(t / "p.txt")],
        ("--output", "p.txt", ".csv or .json"),
    ),
    Case(
        "evaluate a folder without a model",
        lambda d, t, r: ["evaluate", str(d), "--data", str(d)],
        ("holds no model", "config.json", "output_dir of a finished run"),
    ),
    Case(
        "evaluate a missing folder",
        lambda d, t, r: ["evaluate", str(t / "no-run")],
        ("model directory", "no-run", "does not exist"),
    ),
    Case("push an unfinished run", lambda d, t, r: ["push", _unfinished(r, t), "me/model"], ("not a finished run",)),
    Case(
        "push to a malformed repo id",
        lambda d, t, r: ["push", str(r), "not/a/repo"],
        ("not/a/repo", "not a valid Hub repo id"),
    ),
]


def _note(t: Path) -> str:
    (t / "note.txt").write_text("not an image\n")
    return str(t / "note.txt")


def _unfinished(run: Path, t: Path) -> str:
    copy = t / "unfinished"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint-*", COMPLETION_MARKER))
    return str(copy)


def test_the_matrix_is_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line_exit_2_and_nothing_finished(tmp_path, shapes_dir, trained_run, capsys, case):
    (tmp_path / "one" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cats" / "a.png")
    (tmp_path / "taken.txt").write_text("an existing file\n")
    argv = case.argv(shapes_dir, tmp_path, trained_run)
    before = set(tmp_path.rglob("*"))

    code = main(argv)

    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("hf-cnn-ft: error:")]
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    for words in case.says:
        assert words in lines[0], f"{words!r} not in {lines[0]!r}"
    written = set(tmp_path.rglob("*")) - before
    assert not [p for p in written if p.name in FINISHED_FILES], written
    if case.at_load:
        assert not (tmp_path / "out").exists()  # refused before the output directory was even made
