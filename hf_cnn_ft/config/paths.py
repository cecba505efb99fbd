"""Telling a local path from a Hub id, without touching the data: the recipe checks and the data
sources agree on it."""

from __future__ import annotations

import os
from pathlib import Path

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def looks_like_local_path(source: str) -> bool:
    """True for what can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x.csv``); ``ns/name`` may be a
    Hub id."""
    return (
        source.startswith(("/", ".", "~"))
        or Path(source).suffix.lower() in TABLE_SUFFIXES
        or source.count("/") > 1
        or os.sep != "/"
        and os.sep in source
    )
