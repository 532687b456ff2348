"""Shared fixtures: a fixed seed for every test, one intra-op thread where asked, and the
path to ../shared."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread within the block, restored on leaving it; for module-scoped
    fixtures of a module that uses :func:`one_thread` (they are set up before it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test of small operators, which only lose to thread
    hand-offs (five times slower on two busy cores); restored after the test. Used as
    ``@pytest.mark.usefixtures("one_thread")``, or for a whole module as
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with single_thread():
        yield


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the repository (CI has it); tests needing it skip without it."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: these tests read the project's shared data files")
    return SHARED
