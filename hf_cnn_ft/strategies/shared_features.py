"""Frozen features shared by the trials of a search (`hf-cnn-ft tune`).

Trials that differ only in what trains on top of the frozen backbone (the head's rate, epochs, weight
decay, class weights) would extract the very same features again. Inside `sharing_features()` the linear
probe keeps each view's features under a key of everything they depend on (the weights, the images,
the input and augmentation settings, the seed), so such a trial reuses them. Outside it nothing is kept.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hf_cnn_ft.strategies.unfreezing import fingerprint

Features = tuple[torch.Tensor, torch.Tensor]  # pooled features and labels
_shared: OrderedDict[tuple[str, str], Features] | None = None
CAPACITY = 32  # views kept: a few trials' worth of views and validation sets


@contextmanager
def sharing_features() -> Iterator[None]:
    """Keeps the linear probe's features for the runs inside, forgets them after."""
    global _shared
    previous, _shared = _shared, OrderedDict()
    try:
        yield
    finally:
        _shared = previous


def features_key(model: nn.Module, *depends_on: Any) -> str | None:
    """A key for the features `model` computes given `depends_on`; None when nothing is being shared."""
    if _shared is None:
        return None
    digest = hashlib.sha256(fingerprint(model).encode())
    for part in depends_on:
        digest.update(repr(part).encode())
    return digest.hexdigest()


def shared_or_computed(key: str | None, view: str, compute: Callable[[], Features]) -> Features:
    """The view's features from an earlier trial with the same key, or computed (and kept) now."""
    if key is None or _shared is None:
        return compute()
    if (key, view) in _shared:
        _shared.move_to_end((key, view))
        return _shared[(key, view)]
    _shared[(key, view)] = features = compute()
    while len(_shared) > CAPACITY:
        _shared.popitem(last=False)
    return features
