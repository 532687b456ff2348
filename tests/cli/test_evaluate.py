"""`metaacdc evaluate`: the table, the CSV under RUN_DIR/eval, and one-line errors."""

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
from tests.command_line import run_in_process, run_process
from tests.tiny_runs import (
    IMAGE_SIZE,
    IMAGES_PER_CLASS,
    evaluation_episodes,
    make_run,
    synthetic,
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
        "ways",
        "shots",
        "tasks",
        "accuracy",
        "(%)",
    ]
    assert row.split()[:6] == [str(run_dir), "conv4", "plain", "5", "1", "4"]
    # the run's 5 training steps, twice at test by default
    assert (run_dir / "eval" / "test-seed2-4tasks-10steps.csv").is_file()
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
    assert out.splitlines()[1].split()[3:6] == ["3", "2", "5"]  # ways, shots, all 5 tasks
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
    assert line == f"metaacdc evaluate: error: {tmp_path / 'absent'}: run folder not found"


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
