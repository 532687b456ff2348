"""Claims on a run folder's work: a second trainer or evaluator of the same thing is refused
with a clear error, and a claim dies with the process that held it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metaacdc.cli import main
from metaacdc.evaluation.run import evaluate_run
from metaacdc.runs.folder import RunFolder
from metaacdc.runs.lock import RunBusyError, claim, evaluation_lock, training_lock
from metaacdc.training import train
from tests.tiny_runs import make_run, tiny_config
from tests.training.test_trainer import tiny

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); the claim holder is a process of its own
pytestmark = pytest.mark.usefixtures("one_thread")

HOLD_CLAIM = """
import sys
from pathlib import Path
from metaacdc.runs.lock import claim
with claim(Path(sys.argv[1]), "test"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_second_claim_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    lock = tmp_path / "run" / ".training.lock"
    refused = pytest.raises(RunBusyError, match="training run is in progress in another process")
    with claim(lock, "training run"), refused, claim(lock, "training run"):
        pass
    # released, it is free again; hold=False (a process that writes nothing) takes nothing
    with claim(lock, "training run"), claim(lock, "training run", hold=False):
        pass


def test_training_claimed_by_another_process_is_refused_until_it_dies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CLAIM, str(training_lock(run))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match=f"training {run} is in progress"):
            train(tiny(meta_updates=2), run, progress=False)
        assert not RunFolder(run).last.exists() and not RunFolder(run).config.exists()
        argv = ["train", "--image-size", "16", "--meta-updates", "2", "--out", str(run)]
        assert main(argv) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "in progress in another process" in error[0]
    finally:
        holder.kill()  # no clean exit: the OS must release the claim
        holder.wait()
    assert train(tiny(meta_updates=2), run, progress=False).finished


def test_evaluation_of_the_same_tasks_is_refused_while_claimed(tmp_path: Path) -> None:
    config = tiny_config()
    run = make_run(tmp_path / "run", config).root
    csv = RunFolder(run).evaluations / f"test-seed0-3tasks-{config.test_inner_steps}steps.csv"
    with claim(evaluation_lock(csv), "evaluation"):
        with pytest.raises(RunBusyError, match=f"evaluation {csv} is in progress"):
            evaluate_run(run, tasks=3, device="cpu", progress=False)
        other = evaluate_run(run, tasks=2, device="cpu", progress=False)  # other tasks: free
        assert other.csv.is_file()
    assert not csv.exists()
    assert evaluate_run(run, tasks=3, device="cpu", progress=False).csv == csv
