"""A Gradio Space beside a pushed model: the demo page of `hf-cnn-ft app`, loading the model by its repo id.

The Space holds four files: app.py (which serves the same page as `hf-cnn-ft app REPO`), the wheel of this
version of hf-cnn-ft (no registry serves it), requirements.txt (that wheel with its `app` extra) and README.md
(the Space's metadata: `sdk: gradio`, `models: [REPO]`, which links the Space and the model on the Hub).
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

import yaml
from huggingface_hub import CommitOperationAdd, constants

from hf_cnn_ft.share.own_wheel import build_own_wheel
from hf_cnn_ft.share.push import PushResult, upload

APP_TEMPLATE = '''"""The demo page of {model_repo}, a fine-tuned image classifier (made by hf-cnn-ft)."""

from hf_cnn_ft.app.page import serve

MODEL = "{model_repo}"

if __name__ == "__main__":
    serve(MODEL)
'''


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def space_metadata(model_repo: str) -> dict[str, object]:
    """The Space card's YAML header. Titles are short on the Hub: the model's name, cut to 30 characters."""
    header: dict[str, object] = {
        "title": model_repo.split("/")[-1][:30],
        "emoji": "🔍",
        "colorFrom": "blue",
        "colorTo": "green",
        "sdk": "gradio",
        "app_file": "app.py",
        "models": [model_repo],
        "pinned": False,
    }
    gradio = _installed_version("gradio")
    if gradio:
        header["sdk_version"] = gradio  # the version this page was tested with
    return header


def space_files(model_repo: str, wheel: str) -> dict[str, str]:
    """File name -> content of the Space's text files that serve `model_repo`'s demo page; `wheel` is the name
    of this package's wheel beside them."""
    requirement = f"./{wheel}[app]"
    header = yaml.safe_dump(space_metadata(model_repo), sort_keys=False, allow_unicode=True)
    readme = (
        f"---\n{header}---\n\n# {model_repo}: demo\n\n"
        f"Drop an image to see what [{model_repo}]({constants.ENDPOINT}/{model_repo}) predicts, with calibrated "
        "probabilities when the run fitted a temperature, and where it looked (Grad-CAM).\n\n"
        f"Run it locally: `pip install -r requirements.txt && python app.py`, or `hf-cnn-ft app {model_repo}`.\n"
    )
    app = APP_TEMPLATE.format(model_repo=model_repo)
    return {"app.py": app, "requirements.txt": requirement + "\n", "README.md": readme}


def push_space(space_repo: str, model_repo: str, private: bool = False, model_dir: Path | None = None) -> PushResult:
    """Creates or updates the Gradio Space `space_repo` (a full id: `check_push_access` resolved it) so that it
    serves `model_repo`."""
    with tempfile.TemporaryDirectory() as folder:
        wheel = build_own_wheel(Path(folder))
        files = space_files(model_repo, wheel.name)
        operations = [CommitOperationAdd(name, content.encode()) for name, content in files.items()]
        operations.append(CommitOperationAdd(wheel.name, wheel.read_bytes()))
    return upload(operations, space_repo, private, None, f"Demo page of {model_repo} (hf-cnn-ft)", model_dir, "gradio")
