"""The demo page (`hf-cnn-ft app`) in a real headless browser, and the Space that `push --space` creates."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, TINY_SETTINGS, cli_env, overrides
from huggingface_hub import HfApi, snapshot_download

from hf_cnn_ft.cli.main import main
from hf_cnn_ft.evaluation.predict import predict_files
from hf_cnn_ft.extras.synthetic import make_shapes_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where the page's screenshots go, for a person to look at after the run (outputs/ is not committed).
ARTEFACTS = REPO_ROOT / "outputs" / "test-artefacts"
PAGE_TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_run(tmp_path_factory) -> Path:
    """A tiny trained run whose temperature is raised to 4, so that its probabilities are far from 0 and 1 and
    a wrong order, or a page that ignored the temperature, would show."""
    root = tmp_path_factory.mktemp("app")
    shapes = make_shapes_folder(root / "shapes", per_class=40, size=40)
    output_dir = root / "run"
    settings = {**TINY_SETTINGS, "dataset": shapes, "output_dir": output_dir, "top_losses": 0, "correct_per_class": 0}
    assert main(["train", *overrides(settings)]) == 0
    config = json.loads((output_dir / "config.json").read_text())
    (output_dir / "config.json").write_text(json.dumps({**config, "calibration_temperature": 4.0}))
    return output_dir


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=PAGE_TIMEOUT_MS)
    return page


def _wait_for_page(process: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/config", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no page at {url} after {timeout} s")


@contextmanager
def serving(command: list[str], port: int, cwd: Path | None = None, env: dict[str, str] | None = None):
    process = subprocess.Popen(
        command, cwd=cwd, env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_page(process, url)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def predicted(run: Path, image: Path, tmp_path: Path) -> tuple[list[str], list[float]]:
    """What `hf-cnn-ft predict` says of one image, through the command line."""
    output = tmp_path / f"{image.stem}.json"
    assert main(["predict", str(run), str(image), "--top-k", "3", "--output", str(output)]) == 0
    rows = json.loads(output.read_text())[0]["predictions"]
    return [row["label"] for row in rows], [row["score"] for row in rows]


def shown_labels(page) -> tuple[list[str], list[float]]:
    """The labels the page shows, in its order, with the probabilities their bars are drawn from."""
    page.wait_for_selector("#labels dt", timeout=PAGE_TIMEOUT_MS)
    names = page.locator("#labels dt").all_inner_texts()
    values = page.locator("#labels meter").evaluate_all("meters => meters.map(m => m.value)")
    return names, values


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium for the browser test: .ci/run installs it (`make browser`)")
        pytest.skip("no Chromium on this machine: `make browser` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.mark.slow
def test_page_in_a_browser_shows_what_predict_says(app_run, browser, tmp_path):
    port = free_port()
    image = tmp_path / "unseen.png"
    shutil.copy(make_shapes_folder(tmp_path / "more", per_class=1, size=40) / "red_disc" / "red_disc_000.png", image)
    examples = sorted((app_run / "examples").iterdir())
    with serving([sys.executable, "-m", "hf_cnn_ft", "app", str(app_run), "--port", str(port)], port) as url:
        page = open_page(browser, url)
        summary = json.loads((app_run / "metrics.json").read_text())
        assert f"accuracy {summary['test']['accuracy']:.3f}" in page.inner_text("body")  # the card's headline

        page.set_input_files("#upload input[type=file]", str(image))
        labels, scores = predicted(app_run, image, tmp_path)
        page.wait_for_function(
            "first => document.querySelector('#labels h2')?.textContent.trim() === first", arg=labels[0]
        )
        names, values = shown_labels(page)
        assert names == labels
        assert values == pytest.approx(scores, abs=1e-5)
        assert 0.34 < scores[0] < 0.9, "an undecided model, so that the comparison means something"
        answer = json.loads((tmp_path / f"{image.stem}.json").read_text())[0]["answer"]
        said = page.inner_text("#answer")
        assert said.lower().startswith(answer.lower()), (said, answer)  # `unknown`, or the class, as predict says
        page.wait_for_selector("#gradcam img", timeout=PAGE_TIMEOUT_MS)  # where the model looked
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_function("() => !document.querySelector('.pending')")  # outputs drawn, not fading in
        page.screenshot(path=str(ARTEFACTS / "app-page.png"), full_page=True)

        # One of the run's own test images, picked from the examples under the upload
        page = open_page(browser, url)
        page.locator("button.gallery-item").first.click()
        labels, scores = predicted(app_run, examples[0], tmp_path)
        page.wait_for_function(
            "first => document.querySelector('#labels h2')?.textContent.trim() === first", arg=labels[0]
        )
        assert shown_labels(page) == (labels, pytest.approx(scores, abs=1e-5))

        # A text file named .png: a message on the page, no traceback
        fake = tmp_path / "notes.png"
        fake.write_text("meeting notes, not a picture\n")
        page = open_page(browser, url)
        page.set_input_files("#upload input[type=file]", str(fake))
        message = page.get_by_text("is not an image that can be read")
        message.wait_for(timeout=PAGE_TIMEOUT_MS)
        assert "notes.png" in message.inner_text() and "Traceback" not in page.inner_text("body")
        page.screenshot(path=str(ARTEFACTS / "app-not-an-image.png"), full_page=True)


@pytest.mark.slow
def test_example_images_are_test_images_of_every_class(app_run):
    names = [path.name for path in sorted((app_run / "examples").iterdir())]
    summary = json.loads((app_run / "metrics.json").read_text())
    assert len(names) == 8  # report.example_images, taken from the 12 test images
    assert [name.split("_", 1)[1].removesuffix(".png") for name in names[:3]] == summary["label_names"]


@pytest.mark.slow
def test_adapter_run_is_served_as_predict_sees_it(tmp_path, shapes_dir):
    """A LoRA run: the page loads the base model from the run's recipe, puts the adapter on it and merges."""
    from hf_cnn_ft.app.demo_model import classify, explain, load_demo_model
    from hf_cnn_ft.config.sections import ModelArguments
    from hf_cnn_ft.data.images import open_image
    from hf_cnn_ft.models.build import build_model
    from hf_cnn_ft.models.io import save_model

    base_model, data_config = build_model(ModelArguments(model="test_resnet", pretrained=False, image_size=32), ["a"])
    save_model(base_model, data_config, tmp_path / "base")
    out = tmp_path / "lora"
    settings = {**TINY_SETTINGS, "model": tmp_path / "base", "pretrained": True, "num_train_epochs": 2}
    settings.update(dataset=shapes_dir, output_dir=out, peft_method="lora", top_losses=0, correct_per_class=0)
    assert main(["train", *overrides(settings)]) == 0
    demo = load_demo_model(str(out))
    image = demo.examples[0]
    expected = predict_files(out, [image])[0]
    shown = classify(demo, open_image(image), top_k=3)
    assert shown.labels == expected.labels and shown.scores == pytest.approx(expected.scores, abs=1e-6)
    assert shown.answer == expected.answer
    picture = explain(demo, open_image(image), expected.labels[0])
    assert picture.dtype == np.uint8 and picture.shape[1] == 2 * picture.shape[0]  # the view beside its Grad-CAM


def test_hub_id_is_served_online_and_from_the_cache_when_the_hub_is_down(app_run, hub, monkeypatch, caplog):
    from huggingface_hub import constants

    from hf_cnn_ft.app.demo_model import classify, headline, load_demo_model
    from hf_cnn_ft.data.images import open_image

    repo_id = hub.repo_id("served")
    assert main(["push", str(app_run), repo_id, "--images"]) == 0  # the page shows the pushed examples
    image = sorted((app_run / "examples").iterdir())[1]
    expected = predict_files(app_run, [image])[0]
    online = load_demo_model(repo_id)
    assert [path.name for path in online.examples] == [path.name for path in sorted((app_run / "examples").iterdir())]
    assert classify(online, open_image(image), 3).labels == expected.labels
    assert headline(online).startswith(f"# {repo_id}") and "accuracy **" in headline(online)

    with socket.socket() as probe:  # a port nothing listens on: the Hub is down
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{probe.getsockname()[1]}")
    offline = load_demo_model(repo_id)
    assert f"cached copy of {repo_id}" in caplog.text
    assert classify(offline, open_image(image), 3).scores == pytest.approx(expected.scores, abs=1e-6)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf_cnn_ft", *args]
    return subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=120)


@pytest.mark.slow
def test_a_port_in_use_is_one_line(app_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _run_cli("app", str(app_run), "--port", str(taken.getsockname()[1]))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "is in use: pass --port" in result.stderr


def test_a_folder_without_a_model_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("no model here\n")
    result = _run_cli("app", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "holds no model" in result.stderr


def _space_env(hub, port: int) -> dict[str, str]:
    """What the Hub gives a Space: its port and host in Gradio's variables (and here, the loopback Hub)."""
    return {**cli_env(), "HF_TOKEN": hub.token, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}


@pytest.mark.slow
def test_pushed_space_serves_the_model_by_its_repo_id(app_run, hub, tmp_path, capsys, monkeypatch):
    repo_id, space_id = hub.repo_id("shapes-model"), hub.repo_id("shapes-demo")
    assert main(["push", str(app_run), repo_id, "--space", space_id, "--images"]) == 0
    assert f"demo Space: {HfApi().endpoint}/spaces/{space_id}" in capsys.readouterr().out

    files = set(HfApi().list_repo_files(space_id, repo_type="space"))
    assert {"app.py", "requirements.txt", "README.md"} <= files
    assert "examples/01_blue_triangle.png" in HfApi().list_repo_files(repo_id)  # the page's examples travel too
    checkout = Path(snapshot_download(space_id, repo_type="space", local_dir=tmp_path / "space"))
    readme = (checkout / "README.md").read_text()
    header = yaml.safe_load(readme.split("---")[1])
    assert header["sdk"] == "gradio" and header["models"] == [repo_id] and header["app_file"] == "app.py"
    assigned = {
        node.targets[0].id: node.value.value
        for node in ast.parse((checkout / "app.py").read_text()).body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    }
    assert assigned["MODEL"] == repo_id
    # No registry serves hf-cnn-ft: the Space carries the wheel of the version that pushed it, and its
    # requirement resolves to that file with the app extra.
    wheels = sorted(checkout.glob("hf_cnn_ft-*-py3-none-any.whl"))
    assert len(wheels) == 1 and (checkout / "requirements.txt").read_text() == f"./{wheels[0].name}[app]\n"
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--no-deps", "-q"]
    resolved = subprocess.run(
        [*pip, "--dry-run", "--ignore-installed", "--report", "-", "-r", "requirements.txt"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    (install,) = json.loads(resolved.stdout)["install"]
    assert install["metadata"]["name"] == "hf-cnn-ft" and install["requested_extras"] == ["app"]
    assert any(r.startswith("gradio") and 'extra == "app"' in r for r in install["metadata"]["requires_dist"])
    installed = tmp_path / "space-site-packages"
    subprocess.run([*pip, "--target", str(installed), "-r", "requirements.txt"], cwd=checkout, check=True)

    from gradio_client import Client, handle_file
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # the client would report itself to the Hub
    port = free_port()
    image = sorted((app_run / "examples").iterdir())[-1]
    space_env = {**_space_env(hub, port), "PYTHONPATH": str(installed)}  # hf_cnn_ft from the Space's wheel
    with serving([sys.executable, "app.py"], port, cwd=checkout, env=space_env) as url:
        config = json.loads(urllib.request.urlopen(url + "/config", timeout=10).read())
        assert config["title"] == f"{repo_id} · hf-cnn-ft"
        said, label, gradcam = Client(url, verbose=False).predict(handle_file(str(image)), api_name="/on_image")
    labels, scores = predicted(app_run, image, tmp_path)
    answer = json.loads((tmp_path / f"{image.stem}.json").read_text())[0]["answer"]
    assert said.lower().startswith(f"**{answer.lower()}"), (said, answer)  # the page's answer is predict's
    assert [row["label"] for row in label["confidences"]] == labels
    assert [row["confidence"] for row in label["confidences"]] == pytest.approx(scores, abs=1e-5)
    assert gradcam is not None


def test_a_space_the_token_may_not_write_is_refused_before_any_upload(app_run, hub):
    repo_id = hub.repo_id("never-pushed")
    assert main(["push", str(app_run), repo_id, "--space", "someone-else/demo"]) == 2
    assert not HfApi().repo_exists(repo_id)
