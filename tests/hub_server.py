"""A small Hugging Face Hub-compatible HTTP server for the tests, on 127.0.0.1 only.

It implements the part of the Hub API that the real client libraries (huggingface_hub,
transformers, timm, datasets) call to create repos, upload (regular and LFS files), list and
download: enough to push a fine-tuned model and pull models and datasets back over real HTTP.
Repos live in memory. Endpoints and their payloads: ../shared/notes/hub-api.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".arrow", ".pt", ".pth", ".onnx", ".png", ".jpg", ".zip")
LFS_MIN_SIZE = 1_000_000
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
INVALID_TOKEN = "Invalid credentials in Authorization header"


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n".encode()
        )

    @property
    def oid(self) -> str:
        return git_blob_oid(self.pointer if self.lfs else self.content)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid

    def entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.oid, "size": len(self.content), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    parent: str | None
    files: dict[str, StoredFile]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    owner: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and revision.startswith("refs/heads/"):
            oid = self.branches.get(revision.removeprefix("refs/heads/"))
        if oid is None and re.fullmatch(r"[0-9a-f]{40}", revision):
            oid = revision if revision in self.commits else None
        return self.commits.get(oid) if oid else None

    def history(self, head: Commit) -> list[Commit]:
        chain = [head]
        while chain[-1].parent:
            chain.append(self.commits[chain[-1].parent])
        return chain

    def commit(self, branch: str, title: str, message: str, files: dict[str, StoredFile]) -> Commit:
        parent = self.branches.get(branch)
        new = Commit(uuid.uuid4().hex + uuid.uuid4().hex[:8], title, message, parent, files)
        self.commits[new.oid] = new
        self.branches[branch] = new.oid
        return new


class HubState:
    """Everything the server knows; tests read it to assert on what the client did."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tokens: dict[str, str] = {}  # token -> user name
        self.token_roles: dict[str, str] = {}  # token -> "read" or "write", as the Hub's access tokens
        self.memberships: dict[str, dict[str, str]] = {}  # user -> {org: role in the org}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, token)
        self.unhandled: list[str] = []
        self.drop_connection_on: str | None = None  # a regex of request paths to answer by hanging up

    def add_user(self, name: str, role: str = "write", orgs: dict[str, str] | None = None) -> str:
        """A user and a token for it; `role` read tokens may not write anywhere, and the user may write to
        its own namespace and to the orgs where its role is write or admin."""
        token = f"hf_test_{uuid.uuid4().hex}"
        self.tokens[token] = name
        self.token_roles[token] = role
        self.memberships.setdefault(name, {}).update(orgs or {})
        return token

    def may_write(self, token: str | None, namespace: str) -> bool:
        user = self.tokens.get(token or "")
        if user is None or self.token_roles.get(token) != "write":
            return False
        return namespace == user or self.memberships.get(user, {}).get(namespace) in ("write", "admin")

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get((repo_type, repo_id))


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


REPO = r"(?P<repo>[^/]+/[^/]+?)"
TYPES = r"(?P<type>models|datasets|spaces)"
ROUTES: list[tuple[str, str, str]] = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", rf"/api/{TYPES}/{REPO}(?:/revision/(?P<rev>.+))?", "info"),
    ("GET", rf"/api/{TYPES}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/{TYPES}/{REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("GET", rf"/api/{TYPES}/{REPO}/refs", "refs"),
    ("GET", rf"/api/{TYPES}/{REPO}/commits/(?P<rev>[^/]+)", "commits"),
    ("POST", rf"/api/{TYPES}/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/{TYPES}/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/api/{TYPES}/{REPO}/branch/(?P<name>[^/]+)", "create_branch"),
    ("DELETE", rf"/api/{TYPES}/{REPO}/branch/(?P<name>[^/]+)", "delete_branch"),
    ("POST", rf"/api/{TYPES}/{REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
    ("POST", rf"(?:/(?P<type>datasets|spaces))?/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("GET", rf"(?:/(?P<type>datasets|spaces))?/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"(?:/(?P<type>datasets|spaces))?/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _handle(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.raw_body = self._body()  # always read the body: the client reuses connections
        token = self._token()
        with state.lock:
            state.requests.append((self.command, url.path, token))
        if state.drop_connection_on and re.search(state.drop_connection_on, url.path):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        for method, pattern, name in ROUTES:
            match = re.fullmatch(pattern, url.path)
            if method == self.command and match:
                try:
                    if token is not None and token not in state.tokens:
                        raise HubError(401, INVALID_TOKEN)
                    with state.lock:
                        getattr(self, f"do_{name}")(**match.groupdict())
                except HubError as error:
                    headers = {"X-Error-Message": error.message}
                    if error.code:
                        headers["X-Error-Code"] = error.code
                    self._json({"error": error.message}, error.status, headers)
                return
        state.unhandled.append(f"{self.command} {self.path}")
        self._json({"error": f"not implemented: {self.command} {url.path}"}, 404)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    def _token(self) -> str | None:
        header = self.headers.get("Authorization", "")
        return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None

    def _user(self, required: bool = True) -> str | None:
        user = self.server.state.tokens.get(self._token() or "")
        if user is None and required:
            raise HubError(401, "You must be authenticated to do this")
        return user

    def _repo(self, type: str | None, repo: str, write: bool = False) -> Repo:
        repo_type = (type or "models").removesuffix("s")
        found = self.server.state.repo(unquote(repo), repo_type)
        user = self._user(required=False)
        if found is None or (found.private and user != found.owner):
            raise HubError(404 if found is None else 401, f"Repository {repo} not found", "RepoNotFound")
        if write and not self.server.state.may_write(self._token(), found.repo_id.split("/")[0]):
            raise HubError(403, "You don't have the rights to write to this repository")
        return found

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
        return commit

    def _url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.server.endpoint}/{prefix}{repo.repo_id}"

    # -- account and repos ------------------------------------------------------------------------
    def do_whoami(self) -> None:
        name, state = self._user(), self.server.state
        orgs = [{"type": "org", "name": org, "roleInOrg": role} for org, role in state.memberships[name].items()]
        token = {"displayName": "test", "role": state.token_roles[self._token()]}
        self._json(
            {"type": "user", "name": name, "fullname": name, "orgs": orgs,
             "auth": {"type": "access_token", "accessToken": token}}
        )  # fmt: skip

    def do_agent_harnesses(self) -> None:
        self._json({"standardEnvVars": [], "harnesses": {}})

    def do_create_repo(self) -> None:
        user = self._user()
        payload = json.loads(self.raw_body or b"{}")
        namespace = payload.get("organization") or user
        if not self.server.state.may_write(self._token(), namespace):
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        if repo_type == "space" and payload.get("sdk") not in SPACE_SDKS:
            raise HubError(400, f"A Space needs an sdk, one of {', '.join(SPACE_SDKS)}")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or len(payload["name"]) > 96:
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        state = self.server.state
        existing = state.repo(repo_id, repo_type)
        if existing is not None:
            self._json({"error": "You already created this repo", "url": self._url(existing)}, 409)
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_type, repo_id, owner=user, private=private)
        repo.commit("main", "initial commit", "", {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)})
        state.repos[(repo_type, repo_id)] = repo
        self._json({"url": self._url(repo), "name": repo_id, "id": uuid.uuid4().hex})

    def do_info(self, type: str, repo: str, rev: str | None = None) -> None:
        found = self._repo(type, repo)
        commit = self._commit(found, rev or "main")
        blobs = self.query.get("blobs", ["false"])[0] == "true"
        siblings = []
        for path, stored in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = stored.entry(path)
                sibling.update(size=entry["size"], blobId=entry["oid"], lfs=entry.get("lfs"))
            siblings.append(sibling)
        readme = commit.files.get("README.md")
        card_data = _front_matter(readme.content.decode()) if readme else {}
        self._json(
            {
                "_id": found.repo_id,
                "id": found.repo_id,
                "author": found.owner,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": found.history(commit)[-1].date,
                "private": found.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": list(card_data.get("tags") or []),
                "cardData": card_data,
                "siblings": siblings,
            }
        )

    def do_tree(self, type: str, repo: str, rev: str, path: str | None = None) -> None:
        commit = self._commit(self._repo(type, repo), rev)
        prefix = (path or "").strip("/")
        recursive = self.query.get("recursive", ["false"])[0] in ("true", "1", "True")
        entries = _tree_entries(commit, prefix, recursive)
        if prefix and not entries and prefix not in commit.files:
            raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
        self._json(entries)

    def do_paths_info(self, type: str, repo: str, rev: str) -> None:
        commit = self._commit(self._repo(type, repo), rev)
        form = parse_qs(self.raw_body.decode())
        paths = form.get("paths", [])
        if not paths and self.raw_body.startswith(b"{"):
            paths = json.loads(self.raw_body).get("paths", [])
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                entries.append(commit.files[path].entry(path))
            elif any(name.startswith(path + "/") for name in commit.files) or path == "":
                entries.append({"type": "directory", "oid": git_blob_oid(path.encode()), "size": 0, "path": path})
        self._json(entries)

    def do_refs(self, type: str, repo: str) -> None:
        found = self._repo(type, repo)
        self._json(
            {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in found.branches.items()
                ],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in found.tags.items()],
                "converts": [],
            }
        )

    def do_commits(self, type: str, repo: str, rev: str) -> None:
        found = self._repo(type, repo)
        history = found.history(self._commit(found, rev))
        self._json(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": found.owner}],
                }
                for c in history
            ]
        )

    def do_create_branch(self, type: str, repo: str, name: str) -> None:
        found = self._repo(type, repo, write=True)
        name = unquote(name)
        if name in found.branches:
            raise HubError(409, f"Reference refs/heads/{name} already exists")
        payload = json.loads(self.raw_body or b"{}")
        found.branches[name] = self._commit(found, payload.get("startingPoint") or "main").oid
        self._json({})

    def do_delete_branch(self, type: str, repo: str, name: str) -> None:
        found = self._repo(type, repo, write=True)
        if found.branches.pop(unquote(name), None) is None:
            raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
        self._json({})

    def do_create_tag(self, type: str, repo: str, rev: str) -> None:
        found = self._repo(type, repo, write=True)
        payload = json.loads(self.raw_body or b"{}")
        if payload["tag"] in found.tags:
            raise HubError(409, f"Tag {payload['tag']} already exists")
        found.tags[payload["tag"]] = self._commit(found, rev).oid
        self._json({})

    # -- uploads ----------------------------------------------------------------------------------
    def do_validate_yaml(self) -> None:
        payload = json.loads(self.raw_body)
        errors = validate_card_metadata(payload.get("content", ""), payload.get("repoType") or "model")
        self._json({"errors": errors, "warnings": []})

    def do_preupload(self, type: str, repo: str, rev: str) -> None:
        found = self._repo(type, repo, write=True)
        commit = found.resolve(rev)
        answers = []
        for item in json.loads(self.raw_body)["files"]:
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE
            existing = commit.files.get(item["path"]) if commit else None
            remote_oid = None
            if existing is not None:
                remote_oid = existing.sha256 if lfs else git_blob_oid(existing.content)
            answers.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": remote_oid,
                }
            )
        self._json({"files": answers})

    def do_lfs_batch(self, repo: str, type: str | None = None) -> None:
        self._repo(type, repo, write=True)
        payload = json.loads(self.raw_body)
        objects = []
        for item in payload["objects"]:
            answer = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.server.state.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self.server.endpoint}/lfs-upload/{item['oid']}"}}
            objects.append(answer)
        self._json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def do_lfs_upload(self, oid: str) -> None:
        if hashlib.sha256(self.raw_body).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its sha256")
        self.server.state.lfs_objects[oid] = self.raw_body
        self._send(200)

    def do_commit(self, type: str, repo: str, rev: str) -> None:
        found = self._repo(type, repo, write=True)
        branch = unquote(rev)
        head = found.resolve(branch)
        if head is None or branch not in found.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        files = dict(head.files)
        title, message = "", ""
        for line in self.raw_body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title, message = value.get("summary", ""), value.get("description", "")
                parent = value.get("parentCommit")
                if parent and parent != head.oid:
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                content = self.server.state.lfs_objects.get(value["oid"])
                if content is None:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = StoredFile(content, lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"{value['path']} does not exist", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(folder)}
        commit = found.commit(branch, title, message, files)
        self._json({"commitOid": commit.oid, "commitUrl": f"{self._url(found)}/commit/{commit.oid}", "success": True})

    # -- downloads --------------------------------------------------------------------------------
    def do_resolve(self, repo: str, rev: str, path: str, type: str | None = None) -> None:
        found = self._repo(type, repo)
        commit = self._commit(found, rev)
        path = unquote(path)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry {path} not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.etag}"', "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(len(stored.content))})
        content = stored.content
        byte_range = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if byte_range and self.command == "GET":
            start = int(byte_range.group(1) or 0)
            end = min(int(byte_range.group(2)) if byte_range.group(2) else len(content) - 1, len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            self._send(206, content[start : end + 1], headers)
            return
        self._send(200, content, headers)


def _tree_entries(commit: Commit, prefix: str, recursive: bool) -> list[dict[str, Any]]:
    base = prefix + "/" if prefix else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, stored in sorted(commit.files.items()):
        if not path.startswith(base):
            continue
        rest = path[len(base) :].split("/")
        for depth in range(1, len(rest)):
            directory = base + "/".join(rest[:depth])
            entries.setdefault(
                directory, {"type": "directory", "oid": git_blob_oid(directory.encode()), "size": 0, "path": directory}
            )
            if not recursive:
                break
        if len(rest) == 1 or recursive:
            entries[path] = stored.entry(path)
    return list(entries.values())


def _front_matter(text: str) -> dict[str, Any]:
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if not match:
        return {}
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else {}


SPACE_SDKS = ("gradio", "docker", "static", "streamlit")


def validate_card_metadata(content: str, repo_type: str = "model") -> list[dict[str, str]]:
    """The checks the Hub runs on a README's YAML metadata, for the fields a model or Space card uses."""
    errors: list[str] = []
    try:
        meta = _front_matter(content) if content.lstrip().startswith("---") else yaml.safe_load(content) or {}
    except yaml.YAMLError as exc:
        return [{"message": f"invalid YAML: {exc}"}]
    if not isinstance(meta, dict):
        return [{"message": "metadata must be a mapping"}]
    for key in ("license", "library_name", "pipeline_tag"):
        if key in meta and not isinstance(meta[key], str):
            errors.append(f'"{key}" must be a string')
    for key in ("tags", "datasets", "metrics"):
        if key in meta and not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
            errors.append(f'"{key}" must be a list of strings')
    if repo_type == "space":
        if meta.get("sdk") not in SPACE_SDKS:
            errors.append(f'"sdk" must be one of {", ".join(SPACE_SDKS)}')
        for key in ("title", "app_file", "sdk_version"):
            if key in meta and not isinstance(meta[key], str):
                errors.append(f'"{key}" must be a string')
        models = meta.get("models", [])
        if not (isinstance(models, list) and all(isinstance(v, str) for v in models)):
            errors.append('"models" must be a list of strings')
    if "base_model" in meta and not isinstance(meta["base_model"], (str, list)):
        errors.append('"base_model" must be a string or a list of strings')
    for index, model in enumerate(meta.get("model-index") or []):
        if not isinstance(model, dict) or "name" not in model or not isinstance(model.get("results"), list):
            errors.append(f'"model-index[{index}]" needs "name" and a "results" list')
            continue
        for result in model["results"]:
            task, dataset, metrics = result.get("task", {}), result.get("dataset", {}), result.get("metrics")
            if "type" not in task:
                errors.append('"model-index[].results[].task.type" is required')
            if not {"name", "type"} <= set(dataset):
                errors.append('"model-index[].results[].dataset" needs "name" and "type"')
            if not isinstance(metrics, list) or not all({"type", "value"} <= set(m) for m in metrics):
                errors.append('"model-index[].results[].metrics" needs a list of {type, value}')
    return [{"message": message} for message in errors]


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.state = HubState()
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, name="hub-server", daemon=True)

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
