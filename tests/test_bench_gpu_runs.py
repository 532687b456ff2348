"""`scripts/bench_gpu_runs.py`: a bad CSV is one clear line, not a traceback; an older CSV
reads as the learn2learn engine without capture; a dry run measures every arm of every run,
the CUDA-graph capture's path included (rehearsed on the CPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.command_line import Outcome, run_in_process
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_gpu_runs.py"
MISSING = "no such file"


def script_in_process(
    argv: list[str], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Outcome:
    """``bench_gpu_runs.py ARGV`` run by this interpreter, from the repository root as the
    script is (the tests below; a fresh process is started once, by the last test)."""
    spec = importlib.util.spec_from_file_location("bench_gpu_runs", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(REPO)

    def entry(argv: list[str]) -> int:
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
        return script.main()

    return run_in_process(argv, capfd, entry=entry)


def compare_in_process(
    csv: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Outcome:
    """``bench_gpu_runs.py --compare CSV``, in this process."""
    return script_in_process(["--compare", str(csv)], capfd, monkeypatch)


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


def test_an_older_csv_is_the_learn2learn_engine_without_capture(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = pd.read_csv(REPO / "docs" / "gpu-runs-h100" / "gpu_runs.csv")
    older = tmp_path / "older.csv"  # as written before --engine and --cuda-graphs existed
    measured.drop(columns=["engine", "graphs"]).to_csv(older, index=False)
    outcome = script_in_process(["--compare", str(older), "--no-estimate"], capfd, monkeypatch)
    assert outcome.code == 0, outcome.err
    assert "per arm: learn2learn, graphs off 103.8 h (20 runs)" in outcome.out


@pytest.mark.usefixtures("one_thread")
def test_a_dry_run_measures_every_arm_of_every_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = tmp_path / "runs.csv"
    argv = ["--dry-run", "--engine", "learn2learn", "batched", "--cuda-graphs", "on", "off"]
    argv += ["--shots", "1", "--backbones", "conv4", "--acdc", "none", "net", "--csv", str(csv)]
    outcome = script_in_process(argv, capfd, monkeypatch)
    assert outcome.code == 0, outcome.err
    table = pd.read_csv(csv)
    arms = [("learn2learn", "off"), ("batched", "on"), ("batched", "off")]
    for conv in ("plain", "acdc-net"):  # acdc-net: the captured step takes atom-drop masks
        rows = table[table["conv"] == conv]
        assert list(zip(rows["engine"], rows["graphs"])) == arms
        assert (rows[["update_s", "eval_task_s", "hours"]] > 0).all().all()
    assert "learn2learn engine has no CUDA-graph capture" in outcome.out
    assert "targets of CUDA-graph capture (batched, graphs on)" in outcome.out


def test_a_missing_compare_csv_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--compare", str(tmp_path / "runs.csv")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    outcome = Outcome(result.returncode, result.stdout, result.stderr)
    assert MISSING in outcome.one_error_line()
