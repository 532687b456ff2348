"""`metaacdc evaluate`: the table, the CSV under RUN_DIR/eval (with the checkpoint's meta-update),
notes on runs being trained or unfinished, and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metaacdc.api import load
from metaacdc.cli import main
from metaacdc.data import class_files_from_split, freeze, prepare, synthetic_split
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.runs.checkpoint import load_checkpoint, save_checkpoint
from metaacdc.runs.lock import claim, training_lock
from tests.command_line import run_in_process, run_process
from tests.tiny_runs import (
    IMAGE_SIZE,
    IMAGES_PER_CLASS,
    evaluation_episodes,
    make_run,
    synthetic,
    tiny_config,
)

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run")).root


def evaluated(capsys: pytest.CaptureFixture, *args: str) -> tuple[str, pd.DataFrame]:
    assert main(["evaluate", *args, "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    written = re.search(r"per-task accuracies: (\S+)", out)
    assert written, out
    return out, pd.read_csv(written.group(1), dtype={"task": str})


def test_evaluate_prints_a_table_and_writes_csv(
    run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    out, table = evaluated(capsys, str(run_dir), "--tasks", "4", "--seed", "2")
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "run",
        "backbone",
        "conv",
        "step",
        "ways",
        "shots",
        "tasks",
        "accuracy",
        "(%)",
    ]
    assert row.split()[:7] == [str(run_dir), "conv4", "plain", "0", "5", "1", "4"]
    # the run's 5 training steps, twice at test by default
    assert (run_dir / "eval" / "test-seed2-4tasks-10steps.csv").is_file()
    assert list(table.columns) == ["task", "accuracy", "checkpoint_step"]
    assert set(table.checkpoint_step) == {0}
    # the numbers are the library's, on the sampler the CLI documents
    learner = load(run_dir, device="cpu")
    sampler = evaluation_episodes(learner, seed=2)
    expected = evaluate(learner, sampler, 4, progress=False)
    per_task = table[table.task.str.isdigit()].accuracy.to_numpy()
    np.testing.assert_allclose(per_task, expected.accuracies, rtol=1e-9)
    assert f"{100 * expected.mean:.2f} ± {100 * expected.ci95:.2f}" in row


def test_processes_share_the_tasks_and_give_the_same_numbers(
    run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # each of the two workers then runs one, as one process here
    try:
        _, pooled = evaluated(capsys, str(run_dir), "--tasks", "4", "--processes", "2")
        torch.set_num_threads(1)
        _, single = evaluated(capsys, str(run_dir), "--tasks", "4")
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(pooled, single)


def test_evaluate_with_a_manifest_and_inner_steps(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest = freeze(class_files_from_split(synthetic("test")), 3, 2, 3, 5, seed=0)
    path = manifest.save(tmp_path / "tiny-3w2s.json.gz")
    out, table = evaluated(capsys, str(run_dir), "--episodes", str(path), "--inner-steps", "1")
    assert out.splitlines()[1].split()[4:7] == ["3", "2", "5"]  # ways, shots, all 5 tasks
    assert (run_dir / "eval" / "test-tiny-3w2s-5tasks-1steps.csv").is_file()
    assert table.task.str.isdigit().sum() == 5


def test_evaluate_on_a_prepared_cache(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prepare(
        "synthetic",
        tmp_path / "cache",
        image_size=IMAGE_SIZE,
        splits=("val",),
        progress=False,
        images_per_class=IMAGES_PER_CLASS,
    )
    data = ["--data", str(tmp_path / "cache"), "--split", "val", "--tasks", "2"]
    _, table = evaluated(capsys, str(run_dir), *data)
    assert table.task.str.isdigit().sum() == 2


def test_missing_run_folder_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    """The errors below run in this process; this one runs as the console script does."""
    line = run_process(["evaluate", str(tmp_path / "absent")]).one_error_line()
    assert line == (
        f"metaacdc evaluate: error: {tmp_path / 'absent'}: run folder or checkpoint not found"
    )


def not_a_checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_text("hello")
    return tmp_path


def foreign_manifest(tmp_path: Path) -> Path:
    """Frozen from a synthetic split with more images per class than the run's data."""
    bigger = synthetic_split("test", 8, IMAGES_PER_CLASS + 4)
    return freeze(class_files_from_split(bigger), 5, 1, 14, 3, seed=0).save(tmp_path / "m.json")


def manifest_6way(tmp_path: Path) -> Path:
    return freeze(class_files_from_split(synthetic("test")), 6, 1, 2, 3, seed=0).save(
        tmp_path / "six.json"
    )


def small_cache(tmp_path: Path) -> Path:
    prepare("synthetic", tmp_path / "c16", image_size=16, splits=("test",), progress=False)
    return tmp_path / "c16"


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda run, tmp: [str(tmp)], "no checkpoints/best.pt or last.pt"),
        (lambda run, tmp: [str(not_a_checkpoint(tmp))], "not a readable metaacdc checkpoint"),
        (lambda run, tmp: [run, "--tasks", "0"], "--tasks=0"),
        (lambda run, tmp: [run, "--inner-steps", "-2"], "--inner-steps=-2"),
        (lambda run, tmp: [run, "--split", "dev"], "--split='dev'"),
        (lambda run, tmp: [run, "--device", "abacus"], "device='abacus'"),
        (lambda run, tmp: [run, "--episodes", str(tmp / "no.json")], "manifest not found"),
        (lambda run, tmp: [run, "--episodes", str(foreign_manifest(tmp))], "absent from"),
        (lambda run, tmp: [run, "--episodes", str(manifest_6way(tmp))], "6-way tasks"),
        (lambda run, tmp: [run, "--data", str(small_cache(tmp))], "16px images"),
        (lambda run, tmp: [run, "--data", str(tmp / "nothing")], "not found"),
        (lambda run, tmp: [run, "--processes", "0"], "--processes=0"),
        (lambda run, tmp: [run, "--processes", "2", "--workers", "1"], "workers=1 with"),
        (lambda run, tmp: [run, "--engine", "jax"], "--engine='jax'"),
        (lambda run, tmp: [run, "--engine", "batched", "--processes", "2"], "--processes 1"),
    ],
    ids=[
        "no-checkpoint",
        "not-a-checkpoint",
        "tasks",
        "inner-steps",
        "split",
        "device",
        "missing-manifest",
        "manifest-for-other-data",
        "manifest-too-wide",
        "data-other-size",
        "data-missing",
        "processes",
        "processes-and-workers",
        "engine",
        "batched-and-processes",
    ],
)
def test_errors_are_one_line(
    run_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], make_args, message: str
) -> None:
    argv = ["evaluate", "--device", "cpu", *make_args(str(run_dir), tmp_path)]
    line = run_in_process(argv, capfd).one_error_line()
    assert line.startswith("metaacdc evaluate: error: ") and message in line, line


def test_more_tasks_than_the_manifest_holds(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = freeze(class_files_from_split(synthetic("test")), 5, 1, 2, 3, seed=0).save(
        tmp_path / "three.json"
    )
    assert main(["evaluate", str(run_dir), "--episodes", str(path), "--tasks", "4"]) == 2
    assert "holds 3 tasks" in capsys.readouterr().err


def tiny_run(root: Path, best_step: int, last_step: int | None, meta_updates: int) -> Path:
    """A tiny run of ``meta_updates`` whose best.pt is of meta-update ``best_step`` and
    whose last.pt (when ``last_step`` is given) of ``last_step``."""
    folder = make_run(root, tiny_config(meta_updates=meta_updates))
    payload = load_checkpoint(folder.best)
    save_checkpoint(folder.best, {**payload, "step": best_step})
    if last_step is not None:
        save_checkpoint(folder.last, {**payload, "step": last_step})
    return folder.root


def evaluate_line(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    """`metaacdc evaluate ARGS` on 2 tasks: its row of results and its stderr."""
    argv = ["evaluate", *args, "--tasks", "2", "--device", "cpu", "--no-progress"]
    outcome = run_in_process(argv, capfd)
    assert outcome.code == 0, outcome.err
    return outcome.out.splitlines()[1], outcome.err


def test_a_finished_run_is_scored_without_a_note(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = tiny_run(tmp_path / "run", best_step=2, last_step=3, meta_updates=3)
    row, err = evaluate_line(capfd, str(run))
    assert err == ""
    assert row.split()[3] == "2"  # the best checkpoint's meta-update
    table = pd.read_csv(run / "eval" / "test-seed0-2tasks-10steps.csv")
    assert set(table.checkpoint_step) == {2}


def test_an_unfinished_run_is_scored_with_a_note_naming_the_checkpoint(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = tiny_run(tmp_path / "run", best_step=2, last_step=4, meta_updates=10)
    row, err = evaluate_line(capfd, str(run))
    assert err.splitlines() == [
        f"note: {run} is unfinished (trained to meta-update 4 of 10; `metaacdc train --resume "
        f"--out {run}` continues it): scoring checkpoints/best.pt of meta-update 2"
    ]
    assert row.split()[3] == "2"


def test_a_run_being_trained_is_scored_with_a_note_naming_the_checkpoint(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = tiny_run(tmp_path / "run", best_step=2, last_step=4, meta_updates=10)
    with claim(training_lock(run), f"training {run}"):  # as a trainer holds it
        row, err = evaluate_line(capfd, str(run))
    assert err.splitlines() == [
        f"note: {run} is being trained by another process, at meta-update 4 of 10 so far: "
        "scoring checkpoints/best.pt of meta-update 2, which may not be the run's final result"
    ]
    assert row.split()[3] == "2"
    assert set(pd.read_csv(run / "eval" / "test-seed0-2tasks-10steps.csv").checkpoint_step) == {2}


def test_one_checkpoint_of_a_run_is_scored_apart_from_the_run(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = tiny_run(tmp_path / "run", best_step=2, last_step=3, meta_updates=3)
    row, err = evaluate_line(capfd, str(run / "checkpoints" / "last.pt"))
    assert err == "" and row.split()[3] == "3"
    # its own folder: `metaacdc curve` and `report` never take it for the run's result
    assert [p.relative_to(run).as_posix() for p in (run / "eval").rglob("*.csv")] == [
        "eval/last/test-seed0-2tasks-10steps.csv"
    ]
    assert set(
        pd.read_csv(run / "eval" / "last" / "test-seed0-2tasks-10steps.csv").checkpoint_step
    ) == {3}


def test_a_damaged_best_checkpoint_is_refused_offering_the_last_which_then_scores(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = tiny_run(tmp_path / "run", best_step=2, last_step=5, meta_updates=10)
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    line = run_in_process(["evaluate", str(run), "--device", "cpu"], capfd).one_error_line()
    assert line.startswith(f"metaacdc evaluate: error: {run}: checkpoints/best.pt is damaged (")
    offered = re.search(
        r"`metaacdc (evaluate \S+)` scores the last checkpoint \(meta-update 5\)", line
    )
    assert offered, line
    row, err = evaluate_line(capfd, *offered.group(1).split()[1:])
    assert row.split()[3] == "5"
    assert "scoring checkpoints/last.pt of meta-update 5" in err
