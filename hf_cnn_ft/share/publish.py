"""What a pushed repo holds: the run's files as they are, except that text files name no local absolute
path, and README.md is the card rendered for the repo. All of it is built in memory: pushing writes
nothing into the run directory."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd

from hf_cnn_ft.config.paths import looks_like_local_path
from hf_cnn_ft.config.recipe import Recipe, load_recipe
from hf_cnn_ft.share.card import build_model_card, pictures_in
from hf_cnn_ft.share.card_findings import DATASET_PICTURES, exports_in
from hf_cnn_ft.share.run_dir import EXAMPLES_DIR
from hf_cnn_ft.share.run_summary import RunSummary, read_summary

# Never pushed: Trainer checkpoints (optimizer state, hundreds of MB) and hidden staging files.
NOT_PUSHED = ["checkpoint-*", ".*"]
DATASET_IMAGES = [EXAMPLES_DIR, *DATASET_PICTURES]
TEXT_SUFFIXES = {".md", ".json", ".yaml", ".yml", ".tsv", ".csv", ".txt"}
# An absolute POSIX path that no known setting accounts for (an image outside the dataset folder...):
# a slash not inside a word, URL or relative path, then at least two components.
_ANY_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.-]+/)+([\w.-]+)")


def local_path_names(recipe: Recipe, model_dir: Path) -> dict[str, str]:
    """Every spelling of each local path the run's files may hold -> the folder or file name that the pushed
    copy says instead (the output directory becomes its own name, a dataset folder its name...)."""
    paths = [model_dir, recipe.training.output_dir, recipe.data.dataset, recipe.model.model, recipe.model.weights]
    names: dict[str, str] = {}
    for value in paths:
        if not value or not (looks_like_local_path(str(value)) or Path(str(value)).expanduser().exists()):
            continue
        path = Path(str(value)).expanduser()
        for spelling in (str(value), str(path), str(path.resolve())):
            if spelling not in ("", "."):
                names[spelling] = path.resolve().name
    if Path.home().parent != Path.home():  # not "/", which every path starts with
        names[str(Path.home())] = "~"
    return names


def without_local_paths(text: str, names: dict[str, str]) -> str:
    for path in sorted(names, key=len, reverse=True):  # the longest first: a run folder inside a data folder
        text = re.sub(r"(?<![\w.-])" + re.escape(path) + r"(?![\w.-])", lambda _, name=names[path]: name, text)
    return _ANY_ABSOLUTE_PATH.sub(lambda match: match.group(1), text)


def _pushed_files(model_dir: Path, images: bool = True) -> list[Path]:
    """The run's files a push sends; without `images`, none that shows the dataset's own images."""
    not_pushed = NOT_PUSHED if images else [*NOT_PUSHED, *DATASET_IMAGES]
    files = []
    for path in sorted(model_dir.rglob("*")):
        parts = path.relative_to(model_dir).parts
        if path.is_file() and not any(fnmatch.fnmatch(part, p) for part in parts for p in not_pushed):
            files.append(path)
    return files


def _without_dataset_pictures(summary: RunSummary) -> RunSummary:
    """The summary as the pushed card shows it when the dataset's images stay home: no links to them."""
    if not summary.report:
        return summary
    kept = [name for name in summary.report.get("pictures", []) if name not in DATASET_PICTURES]
    return summary.with_finding("report", {**summary.report, "pictures": kept})


def folder_operations(folder: Path) -> list[CommitOperationAdd]:
    """Every file of `folder` (a model saved in the middle of training), as it is."""
    return [CommitOperationAdd(path.relative_to(folder).as_posix(), str(path)) for path in _pushed_files(folder)]


def _published_text(content: bytes, names: dict[str, str]) -> bytes:
    try:
        return without_local_paths(content.decode("utf-8"), names).encode("utf-8")
    except UnicodeDecodeError:  # not UTF-8 text after all: published as it is
        return content


def repo_operations(model_dir: Path, repo_id: str, images: bool | None = None) -> list[CommitOperationAdd]:
    """The commit that publishes a finished run to `repo_id`, built without touching `model_dir`. The dataset's
    own images go too when `images` says so (None: the run's hub.push_images)."""
    summary = read_summary(model_dir)
    recipe = load_recipe(model_dir / "recipe.yaml") if (model_dir / "recipe.yaml").is_file() else None
    names = local_path_names(recipe, model_dir) if recipe else {str(model_dir.resolve()): model_dir.resolve().name}
    images = images if images is not None else bool(recipe and recipe.hub.push_images)
    if not images:
        summary = _without_dataset_pictures(summary)
    operations = []
    for path in _pushed_files(model_dir, images):
        name = path.relative_to(model_dir).as_posix()
        if name == "README.md" and recipe is not None:
            card = build_model_card(recipe, summary, repo_id, pictures_in(model_dir), exports_in(model_dir))
            content = card.content.encode()
        elif path.suffix.lower() in TEXT_SUFFIXES:
            content = path.read_bytes()
        else:
            operations.append(CommitOperationAdd(name, str(path)))
            continue
        operations.append(CommitOperationAdd(name, _published_text(content, names)))
    return operations
