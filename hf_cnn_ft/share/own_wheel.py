"""This package as a wheel, built from the installed files: what a pushed Space installs.

No registry serves hf-cnn-ft, so a Space's `requirements.txt` cannot name it by version. The Space gets
the wheel of the very version that pushed it instead, and `requirements.txt` points at that file with the
`app` extra, so the Space's pip resolves Gradio and the rest from PyPI as usual.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "hf-cnn-ft"
WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: hf-cnn-ft\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def wheel_name(version: str) -> str:
    return f"hf_cnn_ft-{version}-py3-none-any.whl"


def _record_line(name: str, content: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(content)}"


def _package_files() -> dict[str, bytes]:
    root = Path(__file__).resolve().parents[1]  # the hf_cnn_ft package folder
    return {
        path.relative_to(root.parent).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    }


def _metadata_files(dist_info: str) -> dict[str, bytes]:
    distribution = metadata.distribution(DISTRIBUTION)
    core = distribution.read_text("METADATA") or distribution.read_text("PKG-INFO")  # an editable install: PKG-INFO
    files = {f"{dist_info}/METADATA": core.encode(), f"{dist_info}/WHEEL": WHEEL_FILE.encode()}
    entry_points = distribution.read_text("entry_points.txt")
    if entry_points:
        files[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    return files


def build_own_wheel(folder: Path) -> Path:
    """Writes the installed hf-cnn-ft as a pure-Python wheel into `folder`; returns its path."""
    version = metadata.version(DISTRIBUTION)
    dist_info = f"hf_cnn_ft-{version}.dist-info"
    files = {**_package_files(), **_metadata_files(dist_info)}
    record = [_record_line(name, content) for name, content in files.items()] + [f"{dist_info}/RECORD,,"]
    path = folder / wheel_name(version)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, content in files.items():
            wheel.writestr(name, content)
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path
