"""One flag style: every long option answers to both spellings, `--top-k` and `--top_k`, as recipe overrides
do (`--learning-rate` is `--learning_rate`), so nobody has to remember which verb wants which."""

from __future__ import annotations

import argparse
from typing import Any


def _spellings(name: str) -> list[str]:
    if not name.startswith("--"):
        return [name]
    words = name[2:]
    return list(dict.fromkeys([name, "--" + words.replace("_", "-"), "--" + words.replace("-", "_")]))


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser (sub-commands included) whose long options take dashes or underscores alike."""

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        spelled = list(dict.fromkeys(spelling for name in names for spelling in _spellings(name)))
        return super().add_argument(*spelled, **kwargs)
