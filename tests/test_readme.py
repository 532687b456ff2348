"""The Python examples of the README and of docs/ run as written (each block in a fresh
interpreter, from the repository root, on the embedded synthetic source)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
BLOCKS = [
    (page.relative_to(REPO), block)
    for page in PAGES
    for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
]


def test_readme_has_examples() -> None:
    assert sum(1 for page, _ in BLOCKS if page.name == "README.md") >= 2


@pytest.mark.parametrize(
    ("page", "code"), BLOCKS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BLOCKS)]
)
def test_python_block_runs(page, code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, f"{page}:\n{result.stderr}"
