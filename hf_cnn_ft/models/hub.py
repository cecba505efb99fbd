"""Reaching the Hugging Face Hub for a model repo: one line for each way it fails, and the local cache
when the Hub cannot be reached.

The token is wherever huggingface_hub finds it (HF_TOKEN, then `hf auth login`'s cache). Messages name
where it came from, never the token itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from huggingface_hub import HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from hf_cnn_ft.errors import UserError, first_line

logger = logging.getLogger(__name__)

try:  # the transport huggingface_hub uses: httpx2 since 2.x, httpx before
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

TOKENS_PAGE = "https://huggingface.co/settings/tokens"
NETWORK_ERRORS = (_httpx.TransportError, ConnectionError, TimeoutError)
# One short question decides between the Hub and the cache, instead of every file's download retrying.
PROBE_TIMEOUT_S = 5.0


def token_source() -> str | None:
    """Where the token in use comes from, for messages; None without one."""
    if os.environ.get("HF_TOKEN"):
        return "HF_TOKEN"
    return "the token saved by `hf auth login`" if get_token() else None


def unreachable(exc: BaseException) -> str:
    return f"could not reach the Hub at {constants.ENDPOINT} ({type(exc).__name__})"


@contextlib.contextmanager
def hub_errors(repo_id: str, kept: str = "", retry: str = "") -> Iterator[None]:
    """Turns the Hub client's exceptions into one actionable line. `kept` says what was left intact,
    `retry` how to try again."""
    try:
        yield
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        token = token_source()
        if status == 401 and not isinstance(exc, RepositoryNotFoundError):
            rejected = f"the Hub rejected {token}" if token else "the Hub asks for a token"
            raise UserError(
                f"{rejected} (401 Unauthorized){kept}: set HF_TOKEN to a valid token ({TOKENS_PAGE}), run "
                "`hf auth login`, or unset HF_TOKEN for public repos"
            ) from None
        if status == 403:
            raise UserError(f"{token or 'no token'} may not write to {repo_id} (403 Forbidden){kept}") from None
        if isinstance(exc, RepositoryNotFoundError):
            who = f"or {token} may not see it" if token else "or private: set HF_TOKEN to see it"
            raise UserError(f"Hub repo {repo_id} not found ({who}){kept}: check the repo id") from None
        refused = f"the Hub refused a request for {repo_id} (HTTP {status}: {first_line(exc)})"
        raise UserError(f"{refused}{kept}{retry}") from None
    except NETWORK_ERRORS as exc:
        raise UserError(f"{unreachable(exc)}{kept}{retry}") from None


def model_source(repo_id: str, revision: str | None = None) -> str:
    """Where to load a Hub model repo from: the repo id while the Hub answers, the cached snapshot folder
    (with a warning) when it cannot be reached."""
    if constants.HF_HUB_OFFLINE:
        return repo_id  # the user asked for the cache; transformers reads it
    with hub_errors(repo_id):  # a rejected token or a missing repo: one line at once
        try:
            HfApi().model_info(repo_id, revision=revision, timeout=PROBE_TIMEOUT_S)
            return repo_id
        except NETWORK_ERRORS as exc:
            cause = unreachable(exc)
    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        raise UserError(
            f"{cause}, and {repo_id} is not in the local cache ({constants.HF_HUB_CACHE}): connect once to "
            "download it, or give a local model directory"
        ) from None
    logger.warning("%s: using the cached copy of %s", cause, repo_id)
    return folder


def repo_snapshot(repo_id: str, revision: str | None = None) -> str:
    """A local folder with every file of a Hub model repo (weights, card, metrics, examples): downloaded
    while the Hub answers, the cached snapshot when it cannot be reached."""
    source = model_source(repo_id, revision)
    if source != repo_id:
        return source
    try:
        with hub_errors(repo_id):
            return snapshot_download(repo_id, revision=revision, local_files_only=constants.HF_HUB_OFFLINE)
    except LocalEntryNotFoundError:
        raise UserError(
            f"HF_HUB_OFFLINE is set and {repo_id} is not in the local cache ({constants.HF_HUB_CACHE}): unset it to "
            "download the repo, or give a local run directory"
        ) from None
