"""Pushing a fine-tuned model directory to the Hugging Face Hub, with its model card.

The token comes from where huggingface_hub looks for it (HF_TOKEN, then `hf auth login`'s cache)
and is never passed around, logged or written: a recipe has no field for it.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import TrainerCallback

from hf_cnn_ft.config.sections import HubArguments
from hf_cnn_ft.data.data_config import DataConfig
from hf_cnn_ft.errors import UserError, first_line
from hf_cnn_ft.models.hub import TOKENS_PAGE, hub_errors, token_source
from hf_cnn_ft.models.io import save_model
from hf_cnn_ft.share import run_dir as artefacts
from hf_cnn_ft.share.publish import folder_operations, repo_operations
from hf_cnn_ft.share.run_summary import read_summary

logger = logging.getLogger(__name__)

# Roles in an organisation that may create and write its repos.
WRITING_ROLES = {"admin", "write", "contributor"}


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_url: str
    changed: bool  # False when every file was already on the Hub, byte for byte
    repo_type: str = "model"

    @property
    def repo_url(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{constants.ENDPOINT}/{prefix}{self.repo_id}"


def _whoami(repo_id: str, kept: str = "") -> dict[str, Any]:
    if get_token() is None:
        raise UserError("pushing to the Hub needs a token: set HF_TOKEN or run `hf auth login`")
    with hub_errors(repo_id, kept):
        return HfApi().whoami()


def _scoped_write(access: dict[str, Any], repo_id: str) -> bool:
    """Whether a fine-grained token's scopes include writing to `repo_id` or its namespace."""
    namespace = repo_id.split("/")[0]
    return any(
        scope.get("entity", {}).get("name") in (namespace, repo_id) and "repo.write" in scope.get("permissions", [])
        for scope in access.get("fineGrained", {}).get("scoped", [])
    )


def write_refusal(me: dict[str, Any], repo_id: str) -> str | None:
    """Why the token that `me` (whoami's answer) describes may not push to `repo_id`; None when it may."""
    namespace, user = repo_id.split("/")[0], me.get("name")
    access = me.get("auth", {}).get("accessToken", {})
    role = access.get("role")
    if role == "read":
        return f"it is a read-only token: create one with write access at {TOKENS_PAGE} and set HF_TOKEN to it"
    if role == "fineGrained" and not _scoped_write(access, repo_id):
        return f"its fine-grained permissions do not include repo.write on {namespace}: add it at {TOKENS_PAGE}"
    if namespace == user:
        return None
    org_role = next((org.get("roleInOrg") for org in me.get("orgs", []) if org.get("name") == namespace), None)
    if org_role is None:
        return f"{user} is not a member of {namespace}: push to {user}/{repo_id.split('/')[1]} instead"
    if org_role not in WRITING_ROLES:
        return f"{user}'s role in {namespace} is {org_role}: ask an admin of {namespace} for the write role"
    return None


def check_push_access(repo_id: str, kept: str = "") -> str:
    """Fails before training, not after it, when the push could not work: a malformed id, no token, a token
    the Hub rejects, or one that may not write to the namespace. Returns the full repo id."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"'{repo_id}' is not a valid Hub repo id (namespace/name): {first_line(exc)}") from None
    me = _whoami(repo_id, kept)
    full_id = repo_id if "/" in repo_id else f"{me['name']}/{repo_id}"
    refusal = write_refusal(me, full_id)
    if refusal:
        raise UserError(f"{token_source()} may not push to {full_id}{kept}: {refusal}")
    return full_id


def _kept(model_dir: Path | None) -> str:
    return f"; nothing was pushed and {model_dir} is intact" if model_dir else ""


def upload(
    operations: list[CommitOperationAdd],
    repo_id: str,
    private: bool,
    branch: str | None,
    message: str,
    model_dir: Path | None,
    space_sdk: str | None = None,
) -> PushResult:
    """One commit of `operations` to `repo_id` (created if missing): a model repo, or a Space of `space_sdk`."""
    api = HfApi()
    revision = branch or "main"
    repo_type = "space" if space_sdk else "model"
    kept = _kept(model_dir)
    retry = f": push it again with `hf-cnn-ft push {model_dir} {repo_id}`" if model_dir else ""
    with hub_errors(repo_id, kept, retry):
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk)
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
        before = api.repo_info(repo_id, revision=revision, repo_type=repo_type).sha
        commit = api.create_commit(repo_id, operations, commit_message=message, revision=revision, repo_type=repo_type)
    return PushResult(repo_id, revision, commit.commit_url, changed=commit.oid != before, repo_type=repo_type)


def push_model_dir(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    branch: str | None = None,
    commit_message: str | None = None,
    images: bool | None = None,
) -> PushResult:
    """Pushes a finished run's output directory, with its model card rendered for `repo_id`; the dataset's own
    images (examples/, the report's picture grids) only when `images` or the run's hub.push_images says so.

    Nothing in `model_dir` changes: the card and the path-free copies of text files are built in memory."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file():
        raise UserError(f"{model_dir} is not a model directory (no config.json or adapter_config.json)")
    if not (model_dir / artefacts.COMPLETION_MARKER).is_file():
        raise UserError(
            f"{model_dir} is not a finished run (no {artefacts.COMPLETION_MARKER}): finish it with "
            "`hf-cnn-ft train RECIPE --resume` before pushing"
        )
    repo_id = check_push_access(repo_id, _kept(model_dir))
    message = commit_message or f"Upload fine-tuned {read_summary(model_dir).base_model or 'CNN'} (hf-cnn-ft)"
    return upload(repo_operations(model_dir, repo_id, images), repo_id, private, branch, message, model_dir)


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
                operations = folder_operations(Path(folder))
                result = upload(operations, self.repo_id, self.hub.private, self.hub.branch, message, None)
                logger.info("pushed epoch %g to %s", state.epoch, result.commit_url)
            except UserError as exc:
                logger.warning("intermediate push failed, training goes on: %s", exc)
