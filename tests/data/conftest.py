"""Fixtures for the data tests: the shared data folder and a tiny fake miniImageNet."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.data_fakes import write_fake_miniimagenet

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository; tests needing it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED.resolve()} is absent: the shared data folder is not checked out")
    return SHARED.resolve()


@pytest.fixture
def fake_mini(tmp_path: Path) -> Path:
    """A fake miniImageNet in the CSV layout (``root/images`` + split CSVs)."""
    return write_fake_miniimagenet(tmp_path / "mini", "csv")
