"""`scripts/bench_gpu_runs.py --compare`: a bad CSV is one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def compare(csv: Path) -> subprocess.CompletedProcess[str]:
    script = REPO / "scripts" / "bench_gpu_runs.py"
    command = [sys.executable, str(script), "--compare", str(csv)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("backbone,conv\nconv4,plain\n", "not a CSV written by --csv")],
    ids=["missing", "other-columns"],
)
def test_bad_compare_csv_is_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    csv = tmp_path / "runs.csv"
    if content is not None:
        csv.write_text(content)
    result = compare(csv)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
