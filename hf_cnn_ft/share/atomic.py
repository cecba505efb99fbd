"""Files written whole or not at all: to a hidden name beside the target, then renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def staging_folder_for(target: Path) -> Path:
    """An empty hidden folder beside `target`, on the same filesystem, to fill before `replace_folder`."""
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def replace_folder(staging: Path, target: Path) -> None:
    """Puts the finished `staging` folder at `target`; an older `target` is set aside first and removed only
    once the new one is in place, so a crash leaves one whole folder, never a mix."""
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)
