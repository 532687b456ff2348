"""`scripts/bench_gpu_runs.py --compare`: a bad CSV is one clear line, not a traceback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.command_line import Outcome, run_in_process
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_gpu_runs.py"
MISSING = "no such file"


def compare_in_process(
    csv: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Outcome:
    """``bench_gpu_runs.py --compare CSV`` run by this interpreter, from the repository root
    as the script is (the table below; a fresh process is started once, by the last test)."""
    spec = importlib.util.spec_from_file_location("bench_gpu_runs", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(REPO)

    def entry(argv: list[str]) -> int:
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
        return script.main()

    return run_in_process(["--compare", str(csv)], capfd, entry=entry)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, MISSING), ("backbone,conv\nconv4,plain\n", "not a CSV written by --csv")],
    ids=["missing", "other-columns"],
)
def test_bad_compare_csv_is_one_line(
    tmp_path: Path,
    content: str | None,
    message: str,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    csv = tmp_path / "runs.csv"
    if content is not None:
        csv.write_text(content)
    assert message in compare_in_process(csv, capfd, monkeypatch).one_error_line()


def test_a_missing_compare_csv_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--compare", str(tmp_path / "runs.csv")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    outcome = Outcome(result.returncode, result.stdout, result.stderr)
    assert MISSING in outcome.one_error_line()
