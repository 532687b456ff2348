"""Switching a model to eval mode for a while, each submodule's own mode restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (atom-drop off) within the block; every submodule's own mode
    is back afterwards, so validation leaves a training meta-learner as it found it."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for child, training in modes:
            child.training = training
