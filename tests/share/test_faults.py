"""Fault injection: odd recipe files, non-finite numbers, secrets, output paths, damaged and unsafe checkpoints,
label pathologies. Every case ends in exit 2 with one line naming the file or key, the value and what to do —
before the work it would have cost — or in a finished run that reports what it skipped. Never a traceback.

Each case builds its command line from the shared image folder `d`, a scratch folder `t` and a copy of a
finished run `r`. `spared` names the work that must not start: the function is replaced by one that fails the
test if called, so "checked before any work" is a fact of the test, not of a timing.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS, overrides

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.config.checkpoints import checkpoints

TRAIN = ["train", "--model", "test_resnet", "--pretrained", "false", "--image_size", "32", "--disable_tqdm", "true"]
Argv = Callable[[Path, Path, Path], list[str]]


@dataclass
class Fault:
    name: str
    argv: Argv  # (image folder, scratch folder, copy of a finished run) -> argv
    says: tuple[str, ...]  # words of the one error line
    spared: str | None = None  # "module:function" that must not run


def train(*extra: str) -> Argv:
    """`train` on the image folder into t/out, with `extra` settings ({t}: the scratch folder, {r}: the run)."""
    return lambda d, t, r: [*TRAIN, "--dataset", str(d), "--output_dir", str(t / "out"), *_fill(extra, t, r)]


def _fill(args: tuple[str, ...], t: Path, r: Path) -> list[str]:
    return [a.replace("{t}", str(t)).replace("{r}", str(r)) for a in args]


def recipe(content: str | bytes, name: str = "recipe.yaml") -> Argv:
    def argv(d: Path, t: Path, r: Path) -> list[str]:
        path = t / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["train", str(path), "--dataset", str(d), "--output_dir", str(t / "out")]

    return argv


def run_verb(*args: str) -> Argv:
    return lambda d, t, r: _fill(args, t, r)


def _file(t: Path) -> Path:
    (t / "a-file").write_text("not a folder\n")
    return t / "a-file"


def _unwritable(t: Path) -> Path:
    """A folder this process cannot write into: read-only by its mode, or (for root, whom modes do not stop) a
    folder of the kernel's sysfs."""
    folder = t / "read-only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return folder
    (folder / "probe").unlink()
    return Path("/sys/hf-cnn-ft-test")


def _damaged(run: Path, name: str, how: str) -> Path:
    """The run's newest checkpoint with `name` cut short or overwritten, the older ones removed."""
    *older, newest = checkpoints(run)
    for path in older:
        shutil.rmtree(path)
    target = newest / name
    data = target.read_bytes()
    middle = len(data) // 2
    flipped = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]
    target.write_bytes(data[:middle] if how == "cut" else flipped)
    return newest


BOMB = 'a: &a ["x", "x", "x", "x"]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\ntraining: {output_dir: *c}\n'
PICKLE_PAYLOAD = b"cos\nsystem\n(S'touch /tmp/hf-cnn-ft-pwned'\ntR."

FAULTS = [
    # Recipe files: encodings and YAML pathologies.
    Fault("Latin-1 recipe", recipe("model:\n  model: caf\xe9\n".encode("latin-1")), ("recipe.yaml line 2", "UTF-8")),
    Fault("UTF-16 recipe", recipe("model: {model: x}\n".encode("utf-16")), ("recipe.yaml", "not UTF-8")),
    Fault("binary file as recipe", recipe(bytes(range(256))), ("recipe.yaml", "not UTF-8")),
    Fault("duplicate key", recipe("training:\n  seed: 1\n  seed: 2\n"), ("line 3", "'seed' is given twice", "line 2")),
    Fault("duplicate section", recipe("data: {}\nmodel: {}\ndata: {}\n"), ("line 3", "'data' is given twice")),
    Fault("alias bomb", recipe(BOMB), ("recipe.yaml line 2", "alias *a", "write it out")),
    Fault("merge key", recipe("base: &b {seed: 1}\ntraining:\n  <<: *b\n"), ("alias *b",)),
    Fault("tab indentation", recipe("training:\n\tseed: 1\n"), ("recipe.yaml line 2", "not valid YAML")),
    Fault("recipe is a list", recipe("- seed: 1\n"), ("recipe.yaml", "mapping of sections")),
    Fault("recipe is a folder", run_verb("train", "{t}"), ("recipe file", "is a folder")),
    Fault(
        "huge value, short line",
        recipe("training:\n  learning_rate: " + "9" * 100_000 + "x\n"),
        ("training.learning_rate", "a number", "..."),
    ),
    # Numbers that are not finite.
    Fault("infinite epochs in YAML", recipe("training: {num_train_epochs: .inf}\n"), ("num_train_epochs", "finite")),
    Fault("NaN learning rate in YAML", recipe("training: {learning_rate: .nan}\n"), ("learning_rate", "finite")),
    Fault("overflowing number", recipe("training: {weight_decay: 1e999}\n"), ("weight_decay", "finite")),
    Fault("NaN on the command line", train("--learning_rate", "nan"), ("training.learning_rate", "finite")),
    Fault("inf on the command line", train("--num_train_epochs", "inf"), ("num_train_epochs", "finite")),
    Fault("negative inf", train("--label_smoothing_factor", "-inf"), ("label_smoothing_factor", "finite")),
    # Secrets never go into a recipe (the Trainer would pickle them into every checkpoint).
    Fault("token in a recipe", recipe("training: {hub_token: hf_secret123}\n"), ("training.hub_token", "HF_TOKEN")),
    Fault("token on the command line", train("--hub_token", "hf_secret123"), ("training.hub_token", "hf auth login")),
    # The output path of every verb, checked before the work that fills it.
    Fault(
        "train into a folder below a file",
        lambda d, t, r: train("--output_dir", str(_file(t) / "out"))(d, t, r),
        ("training.output_dir", "a-file is a file"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "train into an unwritable folder",
        lambda d, t, r: train("--output_dir", str(_unwritable(t) / "out"))(d, t, r),
        ("training.output_dir", "cannot write there"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "train over a finished run",
        train("--output_dir", "{r}"),
        ("training.output_dir", "holds a finished run", "--overwrite"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "resume a finished run",
        train("--output_dir", "{r}", "--resume"),
        ("holds a finished run", "--overwrite"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "train into a folder of other files",
        lambda d, t, r: train("--output_dir", str(d))(d, t, r),
        ("training.output_dir", "is not empty", "blue_triangle"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "predict into a folder below a file",
        lambda d, t, r: ["predict", str(r), str(d), "--output", str(_file(t) / "p.csv")],
        ("--output", "a-file is a file"),
        "hf_cnn_ft.evaluation.predict:predict_files",
    ),
    Fault(
        "predict into an unwritable folder",
        lambda d, t, r: ["predict", str(r), str(d), "--output", str(_unwritable(t) / "p.csv")],
        ("--output", "cannot write there"),
        "hf_cnn_ft.evaluation.predict:predict_files",
    ),
    Fault(
        "evaluate into a folder below a file",
        lambda d, t, r: ["evaluate", str(r), "--output", str(_file(t) / "e.json")],
        ("--output", "a-file is a file"),
        "hf_cnn_ft.evaluation.evaluate:evaluate_model",
    ),
    Fault(
        "evaluate into a folder",
        lambda d, t, r: ["evaluate", str(r), "--output", str(t)],
        ("--output", "is a folder"),
        "hf_cnn_ft.evaluation.evaluate:evaluate_model",
    ),
    Fault(
        "export onto an existing file",
        lambda d, t, r: ["export", str(r), "--output", str(_file(t))],
        ("--output", "a-file is a file"),
        "hf_cnn_ft.share.exports.exporting:export_model",
    ),
    Fault(
        "export in an unknown format",
        lambda d, t, r: ["export", str(r), "--format", "tensorrt", "--output", str(t / "x")],
        ("unknown export format 'tensorrt'", "openvino"),
        "hf_cnn_ft.share.exports.exporting:export_model",
    ),
    Fault(
        "export into a folder of other files",
        lambda d, t, r: ["export", str(r), "--output", str(_file(t).parent)],
        ("holds other files", "new or empty folder"),
        "hf_cnn_ft.share.exports.exporting:export_model",
    ),
    Fault(
        "int8 bound without int8",
        lambda d, t, r: ["export", str(r), "--max_drop", "0.5", "--output", str(t / "x")],
        ("--max_drop", "add --quantize int8"),
        "hf_cnn_ft.share.exports.exporting:export_model",
    ),
    Fault(
        "report below a file",
        lambda d, t, r: ["report", str(r), "--output_dir", str(_file(t) / "rep")],
        ("--output_dir", "a-file is a file"),
        "hf_cnn_ft.evaluation.model_report:report_model",
    ),
    Fault(
        "merge below a file",
        lambda d, t, r: ["merge", str(r), str(_file(t) / "merged")],
        ("a-file is a file",),
        "hf_cnn_ft.share.run_dir:merge_adapter_dir",
    ),
    Fault(
        "import weights below a file",
        lambda d, t, r: ["import-weights", "--known", "mobilenet_v2", "--output", str(_file(t) / "w")],
        ("--output", "a-file is a file"),
        "hf_cnn_ft.extras.known_weights:import_known_weights",
    ),
    Fault(
        "data below a file",
        lambda d, t, r: ["data", "food", "--root", str(_file(t) / "data")],
        ("--root", "a-file is a file"),
        "hf_cnn_ft.extras.offline_data:prepare_dataset",
    ),
    Fault(
        "lr-find below a file",
        lambda d, t, r: ["lr-find", *train("--output_dir", str(_file(t) / "lr"))(d, t, r)[1:]],
        ("training.output_dir", "a-file is a file"),
        "hf_cnn_ft.training.lr_find:find_learning_rate",
    ),
    Fault(
        "compare below a file",
        lambda d, t, r: [
            "compare",
            *train("--output_dir", str(_file(t) / "c"))(d, t, r)[1:],
            "--models",
            "test_resnet",
        ],
        ("training.output_dir", "a-file is a file"),
        "hf_cnn_ft.training.compare:compare_models",
    ),
    Fault(
        "tune below a file",
        lambda d, t, r: ["tune", *train("--output_dir", str(_file(t) / "search"))(d, t, r)[1:]],
        ("training.output_dir", "a-file is a file"),
        "hf_cnn_ft.training.tuning.tune:search",
    ),
    # Damaged and unsafe checkpoint and model files.
    Fault(
        "resume from a cut-short weights file",
        lambda d, t, r: train("--resume_from_checkpoint", str(_damaged(r, "model.safetensors", "cut")))(d, t, r),
        ("training.resume_from_checkpoint", "model.safetensors: it is cut short", "another checkpoint"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "resume from a damaged optimizer state",
        lambda d, t, r: train("--resume_from_checkpoint", str(_damaged(r, "optimizer.pt", "garbage")))(d, t, r),
        ("optimizer.pt", "damaged"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "resume from a cut-short random state",
        lambda d, t, r: train("--resume_from_checkpoint", str(_damaged(r, "rng_state.pth", "cut")))(d, t, r),
        ("rng_state.pth", "not a readable torch file"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "resume from a damaged scheduler state",
        lambda d, t, r: train("--resume_from_checkpoint", str(_damaged(r, "scheduler.pt", "garbage")))(d, t, r),
        ("scheduler.pt",),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "train from a pickled model folder",
        lambda d, t, r: train("--model", str(_pickled_model(r, t)))(d, t, r),
        ("model.model", "pytorch_model.bin", "safetensors"),
        "hf_cnn_ft.training.run_start:load_image_data",
    ),
    Fault(
        "predict with a pickled model folder",
        lambda d, t, r: ["predict", str(_pickled_model(r, t)), str(d)],
        ("pytorch_model.bin", "safetensors"),
        "hf_cnn_ft.evaluation.predict:predict_files",
    ),
    # Labels that cannot make classes.
    Fault(
        "every label blank",
        lambda d, t, r: train("--dataset", _csv(d, t, label=lambda i, c: ""))(d, t, r),
        ("l.csv", "no image has a label", "label column"),
    ),
    Fault(
        "header-only CSV", lambda d, t, r: train("--dataset", _csv(d, t, rows=0))(d, t, r), ("l.csv", "lists no images")
    ),
]


def _pickled_model(run: Path, t: Path) -> Path:
    """A model folder whose weights are a pickle that would run a command when loaded."""
    folder = t / "pickled"
    folder.mkdir()
    shutil.copy2(run / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(PICKLE_PAYLOAD)
    return folder


def _csv(
    images: Path, t: Path, label: Callable[[int, str], str] = lambda i, c: c, rows: int | None = None, name: str = "l"
) -> str:
    paths = sorted(p for p in images.rglob("*") if p.is_file())[:rows]
    path = t / f"{name}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([str(p), label(i, p.parent.name)] for i, p in enumerate(paths))
    return str(path)


def test_the_suite_holds_at_least_forty_cases():
    assert len(FAULTS) >= 40 and len({f.name for f in FAULTS}) == len(FAULTS)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    copy = tmp_path / "finished-run"
    shutil.copytree(trained_run, copy)
    return copy


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_a_fault_is_one_line_and_exit_2_before_any_work(fault, shapes_dir, run_copy, tmp_path, capsys, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if fault.spared:
        module, function = fault.spared.split(":")
        monkeypatch.setattr(f"{module}.{function}", _must_not_run(fault.spared))
    argv = fault.argv(shapes_dir, scratch, run_copy)
    run_before = _files(run_copy)

    code = main(argv)

    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("hf-cnn-ft: error:")]
    assert code == 2, captured.err[-2000:]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-2000:]
    assert len(lines[0]) < 600, lines[0][:600]
    for words in fault.says:
        assert words in lines[0], f"{words!r} not in {lines[0]!r}"
    if "damaged" not in fault.name and "cut-short" not in fault.name:
        assert _files(run_copy) == run_before, "a refused command changed the finished run"
    assert not Path("/tmp/hf-cnn-ft-pwned").exists(), "a pickle ran"


def _must_not_run(name: str) -> Callable:
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} ran before the bad input was refused")

    return refuse


# Faults that end in a finished run, which says what it skipped or what looks wrong.


def _train_on(csv_path: str, t: Path, *extra: str) -> Path:
    out = t / "out"
    settings = {**TINY_SETTINGS, "dataset": csv_path, "output_dir": out, "num_train_epochs": 1, "top_losses": 0}
    assert main(["train", *overrides(settings), *extra]) == 0
    return out


@pytest.mark.slow
def test_numeric_labels_with_a_blank_cell_are_classes_0_and_1_and_the_row_is_skipped(shapes_dir, tmp_path, caplog):
    index = {"red_disc": "0", "green_square": "1", "blue_triangle": "2"}
    path = _csv(shapes_dir, tmp_path, label=lambda i, c: "" if i == 5 else index[c])
    summary = json.loads((_train_on(path, tmp_path) / "metrics.json").read_text())
    assert summary["label_names"] == ["0", "1", "2"]
    assert "skipped 1 rows with an empty label" in caplog.text


@pytest.mark.slow
def test_labels_differing_by_case_and_a_lonely_class_are_named_in_the_log(shapes_dir, tmp_path, caplog):
    path = _csv(shapes_dir, tmp_path, label=lambda i, c: "Red_disc" if i == 0 else c)
    summary = json.loads((_train_on(path, tmp_path) / "metrics.json").read_text())
    assert "Red_disc" in summary["label_names"] and "red_disc" in summary["label_names"]
    assert "'Red_disc' and 'red_disc' differ only by case" in caplog.text
    assert "class 'Red_disc' has a single image" in caplog.text


@pytest.mark.slow
def test_a_csv_listing_missing_images_finishes_and_reports_them(shapes_dir, tmp_path):
    path = Path(_csv(shapes_dir, tmp_path))
    with path.open("a") as handle:
        handle.write(f"{tmp_path / 'gone' / 'a.png'},red_disc\n{tmp_path / 'gone' / 'b.png'},green_square\n")
    out = _train_on(str(path), tmp_path)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["skipped_images"] == 2 and all("gone" in item["path"] for item in summary["skipped"])
    assert "gone/a.png" in (out / "skipped_images.tsv").read_text()


@pytest.mark.slow
def test_a_token_in_the_environment_is_written_nowhere(shapes_dir, tmp_path, hub, capfd):
    """HF_TOKEN is how a user logs in: a run that pushes during training leaves it in no file it writes (the
    checkpoints' pickled training arguments included) and in nothing it prints."""
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": out, "num_train_epochs": 2, "top_losses": 0}
    settings.update(repo_id=hub.repo_id("secret-check"), push_strategy="every_save")
    assert main(["train", *overrides(settings)]) == 0
    printed = capfd.readouterr()
    assert hub.token not in printed.out + printed.err
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)
    assert [p for p in written if hub.token.encode() in p.read_bytes()] == []
    assert os.environ["HF_TOKEN"] == hub.token


def test_the_pickle_payload_would_run_if_unpickled():
    """The unsafe-model cases above can fail: their file is a real payload."""
    marker = Path("/tmp/hf-cnn-ft-pwned")
    marker.unlink(missing_ok=True)
    try:
        pickle.loads(PICKLE_PAYLOAD)
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


def test_predictions_and_metrics_go_into_folders_that_do_not_exist_yet(run_copy, shapes_dir, tmp_path):
    """Where the work used to be lost after it was done: the folder of `--output` is made."""
    predictions, metrics = tmp_path / "new" / "p.csv", tmp_path / "other" / "deeper" / "e.json"
    assert main(["predict", str(run_copy), str(shapes_dir / "red_disc"), "--output", str(predictions)]) == 0
    assert main(["evaluate", str(run_copy), "--output", str(metrics)]) == 0
    assert len(predictions.read_text().splitlines()) == 1 + len(list((shapes_dir / "red_disc").iterdir()))
    assert "accuracy" in json.loads(metrics.read_text())
