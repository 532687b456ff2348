"""`metaacdc curve --jobs N`: runs of the grid trained and evaluated side by side, each in a
process of its own, with the numbers of one process; `--jobs auto` as a rule of memory.

Every job is a fresh interpreter (several seconds of imports on the 2-core machine), so the
tests here start as few as they can: one grid of four tiny runs covers the numbers, the
busy and the refused run; one of two covers the failures. Stopping a real `curve` process
(Ctrl-C, SIGTERM) and resuming is marked slow.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import metaacdc.cli
from metaacdc.cli import main
from metaacdc.config import TrainConfig
from metaacdc.reports.grid import GridRun
from metaacdc.reports.jobs import JOBS_MARGIN, auto_jobs, resolve_jobs
from metaacdc.runs.checkpoint import load_checkpoint
from metaacdc.runs.lock import claim, training_lock
from tests.conftest import REPO
from tests.reports.test_curves import TINY, write_tiny_config

#: tiny models: one intra-op thread here, so each job (this process's threads / jobs,
#: at least one) has as many as the one-process grid it is compared with
pytestmark = pytest.mark.usefixtures("one_thread")

GRID = ["--backbones", "conv4", "--acdc", "none", "net", "--tasks", "5"]
#: the per-update numbers of metrics.csv (the rest are timings)
NUMBERS = ["step", "loss", "accuracy", "val_accuracy", "val_ci95"]


def curve(out: Path, config: Path, shots: list[str], *extra: str) -> int:
    argv = ["curve", "--shots", *shots, *GRID, "--config", str(config), "--out", str(out)]
    return main([*argv, *extra])


def test_jobs_give_the_numbers_of_one_process_and_share_the_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_tiny_config(tmp_path)
    alone, together = tmp_path / "alone", tmp_path / "together"
    assert curve(alone, config, ["1", "5"]) == 0
    names = sorted(p.name for p in alone.iterdir() if p.is_dir())
    assert len(names) == 4
    held, refused = (
        together / "conv4-plain-synthetic-5w1s-seed0",
        "conv4-acdc-net-synthetic-5w5s-seed0",
    )
    together.mkdir()
    (together / refused).write_text("a file where the run folder goes")  # a user's mistake
    capsys.readouterr()
    with claim(training_lock(held), "training"):  # another `curve` command trains it
        assert curve(together, config, ["1", "5"], "--jobs", "2") == 2
    first = capsys.readouterr()
    # the refused run: one line at the end naming it; the others went on
    assert first.err.strip().splitlines()[-1].startswith(f"metaacdc curve: error: {refused}: ")
    assert "is a file, not a run folder" in first.err
    assert f"{held.name}: in progress in another process; skipped" in first.out
    assert "1 run(s) left to the other process(es)" in first.out
    trained = sorted(set(names) - {held.name, refused})
    for name in trained:  # each job's lines prefixed with its run's name
        assert re.search(rf"^\[\d/4\] {name}: started \(process \d+\)$", first.out, re.M)
        assert re.search(rf"^{name}: .*% over 5 tasks$", first.out, re.M)
    assert sorted(pd.read_csv(together / "curve.csv")["run"]) == trained

    (together / refused).unlink()
    assert curve(together, config, ["1", "5"], "--jobs", "2") == 0
    second = capsys.readouterr().out
    assert second.count("finished and evaluated; skipped") == 2  # not started again
    assert second.count(": started (process") == 2

    stamps = {p: p.stat().st_mtime_ns for p in together.glob("*/checkpoints/*.pt")}
    assert curve(together, config, ["1", "5"], "--jobs", "2") == 0
    assert capsys.readouterr().out.count("skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # every run as the one-process grid trained and evaluated it, to the last bit
    for name in names:
        pd.testing.assert_frame_equal(
            pd.read_csv(together / name / "metrics.csv")[NUMBERS],
            pd.read_csv(alone / name / "metrics.csv")[NUMBERS],
        )
        weights = [
            load_checkpoint(run / name / "checkpoints" / "best.pt")["model"]
            for run in (alone, together)
        ]
        assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    tables = [
        pd.read_csv(out / "curve.csv").sort_values("run", ignore_index=True)
        for out in (alone, together)
    ]
    pd.testing.assert_frame_equal(tables[0], tables[1])


def fail_in_jobs() -> None:
    """In place of the CLI's plugin loading, which each job calls first: nothing here; in
    the ACDC run's job, a process that dies without a word; in the other, a bug."""
    name = multiprocessing.current_process().name
    if name.startswith("metaacdc-curve-conv4-acdc"):
        os._exit(3)
    if name.startswith("metaacdc-curve-"):
        raise RuntimeError("a bug in a job")


def test_a_failed_job_is_reported_with_its_run_and_the_others_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metaacdc.cli, "load_plugins", fail_in_jobs)
    out = tmp_path / "curve"
    assert curve(out, write_tiny_config(tmp_path), ["1"], "--jobs", "2") == 1
    printed = capsys.readouterr()
    plain, acdc = "conv4-plain-synthetic-5w1s-seed0", "conv4-acdc-net-synthetic-5w1s-seed0"
    ends = printed.err.strip().splitlines()[-2:]
    assert ends[0] == f"metaacdc curve: failed: {plain}: RuntimeError: a bug in a job"
    assert ends[1].startswith(f"metaacdc curve: failed: {acdc}: its process ended with exit code 3")
    assert f"{plain}: Traceback (most recent call last):" in printed.err  # its traceback, prefixed
    assert (out / "curve.csv").is_file()  # the report of what there is, as ever


@pytest.mark.parametrize(
    ("free_gib", "peaks", "jobs"),
    [
        (80, [3.5, 1.4, 2.0], 3),  # room for more than there are runs: one job per run
        (80, [3.5] * 30, 20),  # 80 / (3.5 * 1.1) = 20.8
        (7.6, [3.5] * 4, 1),  # 7.6 < 2 * 3.85
        (7.8, [3.5] * 4, 2),
        (1, [3.5], 1),  # never fewer than one
        (80, [], 1),  # nothing to do
    ],
)
def test_auto_jobs_fits_the_largest_peak_with_a_margin(
    free_gib: float, peaks: list[float], jobs: int
) -> None:
    assert JOBS_MARGIN == 0.1
    assert auto_jobs(int(free_gib * 2**30), peaks) == jobs


def test_auto_is_one_job_on_the_cpu_and_n_at_most_one_per_run(tmp_path: Path) -> None:
    runs = [GridRun(TrainConfig(device="cpu"), tmp_path / f"run{i}", None) for i in range(3)]
    said: list[str] = []
    assert resolve_jobs("auto", runs, said.append) == 1
    assert said == ["--jobs auto: 1 job on the CPU (runs side by side would share its cores)"]
    assert resolve_jobs(8, runs, said.append) == 3
    assert resolve_jobs(2, runs, said.append) == 2
    assert resolve_jobs(2, [], said.append) == 1


def _meta_update_saved(run: Path) -> int:
    return int(load_checkpoint(run / "checkpoints" / "last.pt")["step"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signal_number", "to_the_group", "code", "line"),
    [
        (signal.SIGINT, True, 130, "metaacdc curve: interrupted"),
        (signal.SIGTERM, False, 143, "metaacdc curve: terminated (SIGTERM)"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stopped_curve_waits_for_every_job_to_save_its_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    signal_number: signal.Signals,
    to_the_group: bool,
    code: int,
    line: str,
) -> None:
    """A Ctrl-C reaches the whole process group (sent twice here, as impatient users do);
    a SIGTERM (a session ending) only `curve` itself, which passes it on."""
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({**TINY, "meta_updates": 2000, "val_every": 1000}))
    out = tmp_path / "curve"
    argv = ["curve", "--shots", "1", *GRID, "--config", str(config), "--out", str(out)]
    command = [sys.executable, "-m", "metaacdc", *argv, "--jobs", "2"]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    logs = [
        out / name / "log.txt"
        for name in ("conv4-plain-synthetic-5w1s-seed0", "conv4-acdc-net-synthetic-5w1s-seed0")
    ]
    deadline = time.monotonic() + 180
    while not all(log.is_file() and "starting" in log.read_text() for log in logs):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # a few meta-updates
    for _ in range(2 if to_the_group else 1):
        if to_the_group:
            os.killpg(process.pid, signal_number)
        else:
            process.send_signal(signal_number)
        time.sleep(0.05)
    printed, errors = process.communicate(timeout=120)
    assert process.returncode == code, errors
    assert errors.strip().splitlines()[-1] == line, errors
    assert "Traceback" not in errors
    saved = [_meta_update_saved(log.parent) for log in logs]
    assert all(0 < step < 2000 for step in saved), saved
    for log, step in zip(logs, saved):
        assert f"interrupted; saved meta-update {step}" in log.read_text()
        assert f"{log.parent.name}: interrupted; what it finished is saved" in printed
    # and each run continues where it stopped
    capsys.readouterr()
    assert main([*argv, "--jobs", "2", "--stop-after", "1"]) == 0
    assert [_meta_update_saved(log.parent) for log in logs] == [step + 1 for step in saved]
