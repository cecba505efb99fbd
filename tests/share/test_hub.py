"""Push and pull against the loopback Hub (tests/hub_server.py), driven by the real client libraries."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import TINY_SETTINGS, accelerate_launch, cli_env, overrides
from datasets import load_dataset
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import AutoModelForImageClassification, pipeline

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.evaluation.predict import predict_files
from hf_cnn_ft.models.io import load_model
from hf_cnn_ft.share.card_findings import DATASET_PICTURES

CARD_HEADINGS = ("## Training data", "## Training procedure", "## Results", "## How to use", "## Limitations")


@pytest.fixture
def finished_run(tmp_path, trained_run) -> Path:
    """A copy of the shared tiny run, so that pushing (which renders the card for the repo) leaves it alone."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    return copy


def _commits(repo_id: str, revision: str = "main") -> list:
    return HfApi().list_repo_commits(repo_id, revision=revision)


def _logits(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        output = model.eval()(pixels)
    return getattr(output, "logits", output)


def _files_mentioning(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_train_pushes_model_card_and_weights_that_both_libraries_load(tmp_path, shapes_dir, hub, capfd):
    out, repo_id = tmp_path / "out", hub.repo_id("shapes-resnet")
    settings = {**TINY_SETTINGS, "num_train_epochs": 3, "dataset": shapes_dir, "output_dir": out}
    assert main(["train", *overrides(settings), "--repo_id", repo_id]) == 0
    printed = capfd.readouterr()
    assert f"pushed to:        {hub.server.endpoint}/{repo_id} (main)" in printed.out

    api = HfApi()
    files = set(api.list_repo_files(repo_id))
    assert {"README.md", "config.json", "model.safetensors", "recipe.yaml", "metrics.json"} <= files
    assert not any(name.startswith(("checkpoint-", ".")) and name != ".gitattributes" for name in files)
    assert len(_commits(repo_id)) == 2  # the repo's initial commit, then exactly one push
    # The dataset's own images stay home unless the recipe (hub.push_images) or `push --images` says otherwise.
    assert (out / "examples").is_dir() and any((out / name).is_file() for name in DATASET_PICTURES)
    assert not any(name.startswith("examples/") or name in DATASET_PICTURES for name in files)

    card = ModelCard.load(repo_id)
    card.validate()  # the Hub's metadata check (POST /api/validate-yaml)
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "timm"
    assert card.data.license == "other" and "hf-cnn-ft" in card.data.tags
    metrics = json.loads((out / "metrics.json").read_text())
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["accuracy"].metric_value == pytest.approx(metrics["test"]["accuracy"])
    assert results["f1"].metric_value == pytest.approx(metrics["test"]["f1_macro"])
    assert card.data.model_name == "shapes-resnet"
    for heading in CARD_HEADINGS:
        assert heading in card.text, heading
    assert f'pipeline("image-classification", model="{repo_id}")' in card.text
    assert "](reliability.png)" in card.text and not any(f"]({name})" in card.text for name in DATASET_PICTURES)
    assert f'timm.create_model("hf-hub:{repo_id}", pretrained=True)' in card.text
    # Data (class counts per split), procedure (hyperparameters, hardware, time, the resolved recipe), results.
    assert "| class | train | validation | test |" in card.text and "| learning rate (head) | 0.003 |" in card.text
    assert "Training took" in card.text and "```yaml" in card.text and "model: test_resnet" in card.text
    assert "| class | precision | recall | F1 | support |" in card.text and "| red_disc |" in card.text
    assert "`blue_triangle`, `green_square`, `red_disc`" in card.text  # what it classifies into
    for picture in ("confusion_matrix.png", "training_curves.png"):
        assert f"]({picture})" in card.text and picture in files  # every picture the card shows was uploaded

    # Loadable everywhere, with the labels, predicting exactly what the local model predicts.
    local, _ = load_model(out)
    pulled = AutoModelForImageClassification.from_pretrained(repo_id)
    with_timm = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    assert pulled.config.id2label == local.config.id2label
    assert with_timm.pretrained_cfg["label_names"] == metrics["label_names"]
    torch.testing.assert_close(_logits(pulled), _logits(local))
    torch.testing.assert_close(_logits(with_timm), _logits(local))

    # The token is nowhere: not in what was printed, not in any file written or pushed.
    assert hub.token not in printed.out + printed.err
    assert not _files_mentioning(out, hub.token)
    for name in files:
        assert hub.token.encode() not in Path(api.hf_hub_download(repo_id, name)).read_bytes()


@pytest.mark.slow
def test_native_transformers_model_round_trips_through_the_hub(tmp_path, shapes_dir, hub):
    from transformers import ResNetConfig, ResNetForImageClassification

    base = tmp_path / "tiny-resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(
        base
    )
    out, repo_id = tmp_path / "out", hub.repo_id("native-resnet")
    settings = {**TINY_SETTINGS, "model": base, "num_train_epochs": 1, "dataset": shapes_dir, "output_dir": out}
    assert main(["train", *overrides(settings), "--repo_id", repo_id]) == 0
    assert "preprocessor_config.json" in HfApi().list_repo_files(repo_id)
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "transformers" and "timm.create_model" not in card.text
    pulled = AutoModelForImageClassification.from_pretrained(repo_id)
    assert type(pulled).__name__ == "ResNetForImageClassification"
    torch.testing.assert_close(_logits(pulled), _logits(load_model(out)[0]))


def test_push_command_and_a_repush_that_uploads_nothing(finished_run, hub, capsys):
    repo_id = hub.repo_id("standalone")
    assert main(["push", str(finished_run), repo_id]) == 0
    assert "pushed" in capsys.readouterr().out
    commits = len(_commits(repo_id))
    requests_before = len(hub.server.state.requests)

    assert main(["push", str(finished_run), repo_id]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert len(_commits(repo_id)) == commits
    # The client still asks the LFS batch endpoint, which answers "already stored": no bytes move.
    uploads = [
        path
        for method, path, _ in hub.server.state.requests[requests_before:]
        if (method == "PUT" and "/lfs-upload/" in path) or (method == "POST" and "/commit/" in path)
    ]
    assert uploads == []


def test_pull_by_id_predicts_the_same_as_the_local_model(finished_run, hub, shapes_dir):
    repo_id = hub.repo_id("pull-me")
    assert main(["push", str(finished_run), repo_id]) == 0
    images = sorted(shapes_dir.rglob("*.png"))[:6]
    local = predict_files(finished_run, images)
    pulled = predict_files(repo_id, images)
    assert [(p.labels, p.scores) for p in pulled] == [(p.labels, p.scores) for p in local]
    classifier = pipeline("image-classification", model=repo_id)
    assert classifier(str(images[0]))[0]["label"] == local[0].labels[0]


def test_push_to_a_branch_and_load_that_revision(finished_run, hub):
    repo_id = hub.repo_id("branched")
    assert main(["push", str(finished_run), repo_id, "--branch", "experiment"]) == 0
    api = HfApi()
    assert "model.safetensors" in api.list_repo_files(repo_id, revision="experiment")
    assert "model.safetensors" not in api.list_repo_files(repo_id)  # main keeps only its initial commit
    assert {branch.name for branch in api.list_repo_refs(repo_id).branches} == {"main", "experiment"}
    model = AutoModelForImageClassification.from_pretrained(repo_id, revision="experiment")
    torch.testing.assert_close(_logits(model), _logits(load_model(finished_run)[0]))


def test_private_repo_is_invisible_without_the_token(finished_run, hub):
    repo_id = hub.repo_id("secret")
    assert main(["push", str(finished_run), repo_id, "--private"]) == 0
    api = HfApi()
    assert api.model_info(repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo_id, token=False)


@pytest.mark.slow
def test_train_from_hub_dataset_and_model_ids_with_revisions(tmp_path, shapes_dir, finished_run, hub):
    """Pull side: a dataset pushed with Dataset.push_to_hub and a pushed model, both by id and revision."""
    dataset_id, model_id = hub.repo_id("shapes-data"), hub.repo_id("shapes-model")
    shapes = load_dataset("imagefolder", data_dir=str(shapes_dir), split="train")
    shapes.push_to_hub(dataset_id)
    first_revision = HfApi().dataset_info(dataset_id).sha
    shapes.select(range(30)).push_to_hub(dataset_id)  # a later, smaller version on main
    assert main(["push", str(finished_run), model_id]) == 0
    model_revision = HfApi().model_info(model_id).sha

    out = tmp_path / "out"
    settings = {
        **TINY_SETTINGS,
        "model": model_id,
        "model_revision": model_revision,
        "pretrained": True,
        "num_train_epochs": 1,
        "dataset": dataset_id,
        "dataset_revision": first_revision,
        "output_dir": out,
    }
    assert main(["train", *overrides(settings)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(metrics["split_sizes"].values()) == 120  # the pinned revision, not the 30-image main
    assert metrics["base_model"] == model_id
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == model_id and card.data.datasets == [dataset_id]
    assert f"revision `{first_revision}`" in card.text


@pytest.mark.slow
def test_two_process_train_with_push_makes_exactly_one_commit(tmp_path, shapes_dir, hub):
    out, repo_id = tmp_path / "out", hub.repo_id("ddp-push")
    settings = {**TINY_SETTINGS, "num_train_epochs": 2, "dataset": shapes_dir, "output_dir": out}
    command = accelerate_launch(2, "train", *overrides(settings), "--repo_id", repo_id)
    env = {**cli_env(), "HF_TOKEN": hub.token}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2
    commits = _commits(repo_id)
    assert len(commits) == 2 and commits[0].title.startswith("Upload fine-tuned")
    # Only the main process pushed: one upload negotiation, not one per process.
    preuploads = [p for m, p, _ in hub.server.state.requests if m == "POST" and p.endswith(f"{repo_id}/preupload/main")]
    assert len(preuploads) == 1
    assert hub.token not in result.stdout + result.stderr


@pytest.mark.parametrize("strategy", ["every_save", "best"])
@pytest.mark.slow
def test_push_strategies_push_during_training(tmp_path, shapes_dir, hub, strategy):
    out, repo_id = tmp_path / "out", hub.repo_id(f"pushes-{strategy}")
    settings = {**TINY_SETTINGS, "num_train_epochs": 4, "dataset": shapes_dir, "output_dir": out}
    assert main(["train", *overrides(settings), "--repo_id", repo_id, "--push_strategy", strategy]) == 0
    titles = [c.title for c in _commits(repo_id)]
    assert titles[0].startswith("Upload fine-tuned")  # the final push, with the card, comes last
    last_checkpoint = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last_checkpoint / "trainer_state.json").read_text())["log_history"]
    accuracies = [entry["eval_accuracy"] for entry in history if "eval_accuracy" in entry]
    improvements = sum(a > max(accuracies[:i], default=-1.0) for i, a in enumerate(accuracies))
    expected = len(accuracies) if strategy == "every_save" else improvements
    assert sum(t.startswith("Training in progress, epoch") for t in titles) == expected


# -- bad input: one clear line, the local directory intact, nothing reported as pushed ----------------


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "pushed" not in captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("hf-cnn-ft: error:")]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_wrong_token_is_one_clear_line_before_any_training(tmp_path, shapes_dir, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": out}
    assert main(["train", *overrides(settings), "--repo_id", hub.repo_id("x")]) == 2
    line = _one_line_error(capsys)
    assert "401" in line and "HF_TOKEN" in line and "hf_not_a_real_token" not in line
    assert not (out / "metrics.json").exists()  # failed before training, not after


def test_malformed_repo_id_and_unfinished_run_are_refused(finished_run, hub, capsys):
    assert main(["push", str(finished_run), "not/a/repo"]) == 2
    assert "not a valid Hub repo id" in _one_line_error(capsys)
    (finished_run / "metrics.json").unlink()
    assert main(["push", str(finished_run), hub.repo_id("unfinished")]) == 2
    assert "not a finished run" in _one_line_error(capsys)


def test_connection_dropped_mid_upload(finished_run, hub, capsys):
    repo_id = hub.repo_id("dropped")
    before = _tree_digest(finished_run)
    hub.server.state.drop_connection_on = r"/commit/"
    try:
        assert main(["push", str(finished_run), repo_id]) == 2
    finally:
        hub.server.state.drop_connection_on = None
    line = _one_line_error(capsys)
    assert "could not reach the Hub" in line and "nothing was pushed" in line and f"push {finished_run}" in line
    assert _tree_digest(finished_run) == before  # byte-identical: not even the card was rewritten
    assert "model.safetensors" not in HfApi().list_repo_files(repo_id)


def test_server_down(finished_run, hub, monkeypatch, capsys):
    import socket

    from huggingface_hub import constants

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    assert main(["push", str(finished_run), hub.repo_id("down")]) == 2
    line = _one_line_error(capsys)
    assert f"could not reach the Hub at {closed}" in line and "nothing was pushed" in line


@pytest.mark.parametrize(
    ("role", "orgs", "namespace", "reason"),
    [
        ("read", {}, None, "read-only token"),
        ("write", {}, "someone-else", "is not a member of someone-else"),
        ("write", {"team": "read"}, "team", "role in team is read"),
    ],
)
def test_a_token_that_may_not_write_there_fails_before_any_training(
    tmp_path, shapes_dir, hub, monkeypatch, capsys, role, orgs, namespace, reason
):
    user = f"limited-{role}-{len(orgs)}-{namespace}"
    monkeypatch.setenv("HF_TOKEN", hub.server.state.add_user(user, role=role, orgs=orgs))
    out = tmp_path / "out"
    settings = {**TINY_SETTINGS, "dataset": shapes_dir, "output_dir": out}
    assert main(["train", *overrides(settings), "--repo_id", f"{namespace or user}/model"]) == 2
    line = _one_line_error(capsys)
    assert reason in line and "HF_TOKEN may not push" in line
    assert not out.exists()  # nothing was started: no data loaded, no output directory


def test_a_member_with_the_write_role_pushes_to_the_org(finished_run, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.server.state.add_user(f"member-{hub.name}", orgs={"lab": "write"}))
    assert main(["push", str(finished_run), f"lab/model-{hub.name}"]) == 0
    assert "model.safetensors" in HfApi().list_repo_files(f"lab/model-{hub.name}")


def test_fine_grained_token_needs_repo_write_on_the_namespace():
    from hf_cnn_ft.share.push import write_refusal

    def me(scoped):
        token = {"role": "fineGrained", "fineGrained": {"scoped": scoped}}
        return {"name": "ada", "orgs": [], "auth": {"accessToken": token}}

    reading = [{"entity": {"type": "user", "name": "ada"}, "permissions": ["repo.content.read"]}]
    writing = [{"entity": {"type": "user", "name": "ada"}, "permissions": ["repo.content.read", "repo.write"]}]
    one_repo = [{"entity": {"type": "model", "name": "ada/model"}, "permissions": ["repo.write"]}]
    assert "repo.write on ada" in write_refusal(me(reading), "ada/model")
    assert write_refusal(me(writing), "ada/model") is None
    assert write_refusal(me(one_repo), "ada/model") is None
    assert write_refusal(me(one_repo), "ada/other") is not None


def test_pushing_leaves_the_run_untouched_and_publishes_no_local_path(finished_run, hub, tmp_path_factory, shapes_dir):
    outside = "/srv/scans/2026/broken.png"  # an image outside the dataset folder, as a CSV source can name
    (finished_run / "skipped_images.tsv").write_text(f"path\terror\n{outside}\tUnidentifiedImageError\n")
    before = _tree_digest(finished_run)
    repo_id = hub.repo_id("no-paths")
    assert main(["push", str(finished_run), repo_id]) == 0
    assert _tree_digest(finished_run) == before  # the card for the repo was rendered in memory

    pulled = Path(snapshot_download(repo_id))
    local_roots = [str(tmp_path_factory.getbasetemp()), str(Path.home()), "/srv/scans"]
    for path in pulled.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not [root for root in local_roots if root.encode() in content], path.name
    recipe = yaml.safe_load((pulled / "recipe.yaml").read_text())
    assert recipe["data"]["dataset"] == shapes_dir.name  # a folder name the user can point at their copy
    assert "broken.png" in (pulled / "skipped_images.tsv").read_text()
    assert f'model="{repo_id}"' in (pulled / "README.md").read_text()


def test_invalid_token_on_a_public_repo_names_the_token(finished_run, hub, monkeypatch, capsys, shapes_dir):
    repo_id = hub.repo_id("public")
    assert main(["push", str(finished_run), repo_id]) == 0
    capsys.readouterr()
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(["predict", repo_id, str(next(shapes_dir.rglob("*.png")))]) == 2
    line = _one_line_error(capsys)
    assert "401" in line and "HF_TOKEN" in line and "hf_not_a_real_token" not in line


def _closed_endpoint() -> str:
    import socket

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_hub_down_predicts_from_the_cache_with_a_note(finished_run, hub, monkeypatch, capsys, caplog, shapes_dir):
    from huggingface_hub import constants

    repo_id, image = hub.repo_id("cached"), str(next(shapes_dir.rglob("*.png")))
    assert main(["push", str(finished_run), repo_id]) == 0
    assert main(["predict", repo_id, image]) == 0  # online: downloads into the cache
    online = capsys.readouterr().out.splitlines()[-1]

    closed = _closed_endpoint()
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    assert main(["predict", repo_id, image]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == online
    assert f"could not reach the Hub at {closed}" in caplog.text and f"cached copy of {repo_id}" in caplog.text

    assert main(["predict", hub.repo_id("never-downloaded"), image]) == 2
    line = _one_line_error(capsys)
    assert f"could not reach the Hub at {closed}" in line and "not in the local cache" in line


def test_library_warnings_print_once(python):
    script = (
        "from hf_cnn_ft.cli.main import _configure_logging; _configure_logging()\n"
        "from huggingface_hub.utils import logging as hub_logging\n"
        "hub_logging.get_logger('huggingface_hub.file_download').warning('retrying once')\n"
        "import logging; logging.getLogger('hf_cnn_ft.x').warning('our own warning')\n"
    )
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert result.stderr.count("retrying once") == 1, result.stderr
    assert result.stderr.count("our own warning") == 1, result.stderr


def test_local_paths_are_replaced_as_whole_paths_only():
    from hf_cnn_ft.share.publish import without_local_paths

    names = {"/data/run1": "run1", "runs/x": "x"}
    text = "output_dir: /data/run1\nbest: /data/run1/checkpoint-3 /data/run10 old_runs/x runs/x https://hf.co/a/b"
    published = without_local_paths(text, names)
    assert "output_dir: run1\nbest: run1/checkpoint-3" in published
    assert " run10 " in published  # another folder: only its own name is kept, not mangled into run1
    assert "old_runs/x x " in published and "https://hf.co/a/b" in published


@pytest.mark.slow
def test_push_uploads_the_exports_and_the_card_lists_each_with_its_check(finished_run, hub, tmp_path, python):
    assert main(["export", str(finished_run), "--quantize", "int8"]) == 0
    # OpenVINO's native libraries stay loaded for the rest of a process: its export runs in a process of its own.
    command = [python, "-m", "hf_cnn_ft", "export", str(finished_run), "--format", "openvino"]
    assert subprocess.run(command, env=cli_env(), capture_output=True, timeout=600).returncode == 0
    repo_id = hub.repo_id("with-exports")
    assert main(["push", str(finished_run), repo_id]) == 0
    files = set(HfApi().list_repo_files(repo_id))
    assert {"onnx/model.onnx", "onnx/model.int8.onnx", "openvino/model.xml", "openvino/model.bin"} <= files
    assert {"onnx/preprocessing.json", "openvino/export_report.json"} <= files
    card = Path(hf_hub_download(repo_id, "README.md", cache_dir=tmp_path / "cache")).read_text()
    exports = card[card.index("## Exports") :]
    report = json.loads((finished_run / "onnx" / "export_report.json").read_text())
    int8_accuracy = report["validation_accuracy"]["int8"]
    assert "| `onnx/model.onnx` | onnx | float32 |" in exports and "| `openvino/model.xml` | openvino |" in exports
    assert f"| `onnx/model.int8.onnx` | onnx | int8 | {report['files']['model.int8.onnx'] / 1e6:.1f} MB" in exports
    assert f"{int8_accuracy:.4f} ({-report['int8_drop_points']:+.2f} points)" in exports
    assert "top class agrees on 100%" in exports
