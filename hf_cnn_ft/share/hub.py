"""Pushing a fine-tuned model directory to the Hugging Face Hub, with its model card.

The token comes from where huggingface_hub looks for it (HF_TOKEN, then `hf auth login`'s cache)
and is never passed around, logged or written: a recipe has no field for it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers import TrainerCallback

from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.config.sections import HubArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.errors import UserError, first_line
from hf_cnn_ft.models.io import save_model
from hf_cnn_ft.share import run_dir as artefacts
from hf_cnn_ft.share.card import write_model_card

logger = logging.getLogger(__name__)

# Never pushed: Trainer checkpoints (optimizer state, hundreds of MB) and hidden staging files.
NOT_PUSHED = ["checkpoint-*", ".*"]

try:  # the transport huggingface_hub uses: httpx2 since 2.x, httpx before
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

NETWORK_ERRORS = (_httpx.TransportError, ConnectionError, TimeoutError)


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_url: str
    changed: bool  # False when every file was already on the Hub, byte for byte

    @property
    def repo_url(self) -> str:
        return f"{constants.ENDPOINT}/{self.repo_id}"


@contextlib.contextmanager
def hub_errors(repo_id: str, model_dir: Path | None = None) -> Iterator[None]:
    """Turns the Hub client's exceptions into one actionable line; no token ever appears in it."""
    kept = f"; nothing was pushed and {model_dir} is intact" if model_dir else ""
    retry = f": push it again with `hf-cnn-ft push {model_dir} {repo_id}`" if model_dir else ""
    try:
        yield
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401 and not isinstance(exc, RepositoryNotFoundError):
            raise UserError(
                f"the Hub rejected the token (401 Unauthorized){kept}; set HF_TOKEN to a valid token with write "
                "access, or run `hf auth login`"
            ) from None
        if status == 403:
            raise UserError(f"the token may not write to {repo_id} (403 Forbidden){kept}") from None
        if isinstance(exc, RepositoryNotFoundError):
            raise UserError(f"Hub repo {repo_id} not found, or the token may not see it{kept}") from None
        raise UserError(
            f"the Hub refused the push to {repo_id} (HTTP {status}: {first_line(exc)}){kept}{retry}"
        ) from None
    except NETWORK_ERRORS as exc:
        raise UserError(
            f"could not reach the Hub at {constants.ENDPOINT} ({type(exc).__name__}){kept}{retry}"
        ) from None


def resolve_repo_id(repo_id: str) -> str:
    """Validates a repo id and, when it has no namespace, puts it under the token's user."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"'{repo_id}' is not a valid Hub repo id (namespace/name): {first_line(exc)}") from None
    if get_token() is None:
        raise UserError("pushing to the Hub needs a token: set HF_TOKEN or run `hf auth login`")
    if "/" in repo_id:
        return repo_id
    with hub_errors(repo_id):
        user = HfApi().whoami()["name"]
    return f"{user}/{repo_id}"


def check_push_access(hub: HubArguments) -> str:
    """Fails before training, not after it, when the push could not work. Returns the full repo id."""
    repo_id = resolve_repo_id(hub.repo_id)
    with hub_errors(repo_id):
        HfApi().whoami()
    return repo_id


def _upload(
    folder: Path, repo_id: str, private: bool, branch: str | None, message: str, model_dir: Path | None
) -> PushResult:
    api = HfApi()
    revision = branch or "main"
    with hub_errors(repo_id, model_dir):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        before = api.repo_info(repo_id, revision=revision).sha
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=message,
            ignore_patterns=NOT_PUSHED,
        )
    return PushResult(repo_id, revision, commit.commit_url, changed=commit.oid != before)


def push_model_dir(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    branch: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Pushes a finished run's output directory, with its model card rendered for `repo_id`."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file():
        raise UserError(f"{model_dir} is not a model directory (no config.json or adapter_config.json)")
    if not (model_dir / artefacts.COMPLETION_MARKER).is_file():
        raise UserError(
            f"{model_dir} is not a finished run (no {artefacts.COMPLETION_MARKER}): finish it with "
            "`hf-cnn-ft train RECIPE --resume` before pushing"
        )
    repo_id = resolve_repo_id(repo_id)
    summary = json.loads((model_dir / artefacts.COMPLETION_MARKER).read_text())
    if (model_dir / "recipe.yaml").is_file():
        write_model_card(model_dir, load_recipe(model_dir / "recipe.yaml"), summary, repo_id=repo_id)
    message = commit_message or f"Upload fine-tuned {summary.get('base_model') or 'CNN'} (hf-cnn-ft)"
    return _upload(model_dir, repo_id, private, branch, message, model_dir)


class PushDuringTrainingCallback(TrainerCallback):
    """hub.push_strategy every_save / best: pushes the model in the middle of training too.

    Only the main process pushes. A failed intermediate push is logged and training goes on;
    the final push, after training, is the one that must succeed.
    """

    def __init__(self, hub: HubArguments, repo_id: str, data_config: DataConfig) -> None:
        self.hub, self.repo_id, self.data_config = hub, repo_id, data_config
        self.pushed_best: float | None = None

    def on_save(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        if self.hub.push_strategy == "best":
            if state.best_metric is None or state.best_metric == self.pushed_best:
                return
            self.pushed_best = state.best_metric
        metric = f", best {args.metric_for_best_model} {state.best_metric:.4f}" if state.best_metric is not None else ""
        message = f"Training in progress, epoch {state.epoch:g}{metric}"
        with tempfile.TemporaryDirectory() as folder:
            # A copy, so that saving (contiguous layout for safetensors) leaves the training model alone.
            save_model(copy.deepcopy(model), self.data_config, Path(folder))
            try:
                result = _upload(Path(folder), self.repo_id, self.hub.private, self.hub.branch, message, None)
                logger.info("pushed epoch %g to %s", state.epoch, result.commit_url)
            except UserError as exc:
                logger.warning("intermediate push failed, training goes on: %s", exc)
