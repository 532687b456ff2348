"""Shared fixtures: a fixed seed for every test, and the path to ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the repository (CI has it); tests needing it skip without it."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: these tests read the project's shared data files")
    return SHARED
