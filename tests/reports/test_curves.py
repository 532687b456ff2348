"""`metaacdc curve` runs, resumes and skips the grid; `metaacdc report` tables and plots."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml

from metaacdc.backbones import DEPTH_STUDY
from metaacdc.cli import main
from metaacdc.errors import ConfigError
from metaacdc.reports.curves import (
    COLUMNS,
    REFERENCES,
    data_by_image_size,
    manifests_by_task_shape,
    plot_curve,
    references_for,
)
from metaacdc.runs.folder import RunFolder
from metaacdc.runs.lock import claim, training_lock
from tests.command_line import run_in_process, run_process
from tests.conftest import REPO, single_thread

matplotlib.use("Agg")
import matplotlib.pyplot as plt

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")


TINY = {
    "image_size": 16,
    "synthetic_images_per_class": 12,
    "meta_updates": 2,
    "val_every": 2,
    "val_tasks": 2,
    "workers": 0,
    "inner_steps": 1,
    "queries": 2,
    "test_queries": 3,
    "meta_batch": 2,
}


def write_tiny_config(folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture
def base_config(tmp_path: Path) -> Path:
    return write_tiny_config(tmp_path)


def curve(out: Path, config: Path, *extra: str) -> int:
    return main(
        [
            "curve",
            "--shots",
            "1",
            "5",
            "--backbones",
            "conv4",
            "--acdc",
            "none",
            "net",
            "--config",
            str(config),
            "--tasks",
            "5",
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``--out`` folder of one finished, evaluated tiny grid (2 shots x 2 conv kinds),
    shared by the tests that only read it or rerun it without changing it."""
    folder = tmp_path_factory.mktemp("grid")
    out = folder / "curve"
    with single_thread():  # as the tests run (set up before their one_thread fixture)
        assert curve(out, write_tiny_config(folder)) == 0
    return out


def test_curve_runs_the_grid_then_skips_finished_runs(
    finished_grid: Path, capsys: pytest.CaptureFixture
) -> None:
    out = finished_grid
    base_config = out.parent / "tiny.yaml"
    table = pd.read_csv(out / "curve.csv")
    assert tuple(table.columns) == COLUMNS
    assert sorted(zip(table["shots"], table["conv"])) == [
        (1, "acdc-net"),
        (1, "plain"),
        (5, "acdc-net"),
        (5, "plain"),
    ]
    assert (table["tasks"] == 5).all() and table["accuracy"].between(0, 100).all()
    assert (table["depth"] == 4).all()  # Conv4: four conv layers
    assert (out / "curve.png").stat().st_size > 10_000
    assert "| run | backbone | depth |" in (out / "curve.md").read_text()
    checkpoints = sorted(out.glob("*/checkpoints/last.pt"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    capsys.readouterr()
    assert curve(out, base_config) == 0
    assert capsys.readouterr().out.count("skipped") == 4
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps


def test_curve_stop_after_then_resume(tmp_path, base_config, capsys) -> None:
    out = tmp_path / "curve"
    assert curve(out, base_config, "--stop-after", "1") == 0
    assert capsys.readouterr().out.count("stopped at meta-update 1") == 4
    assert not (out / "curve.csv").read_text().strip().splitlines()[1:]
    assert curve(out, base_config) == 0
    assert len(pd.read_csv(out / "curve.csv")) == 4


def test_curve_command_line_overrides_the_config_file(tmp_path, base_config) -> None:
    out = tmp_path / "curve"
    overrides = ["--inner-lr", "0.05", "--meta-updates", "3", "--stop-after", "1"]
    overrides += ["--init", "closerlook", "--test-inner-steps", "7"]
    assert curve(out, base_config, *overrides) == 0
    configs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*/config.yaml"))]
    assert len(configs) == 4
    assert all(c["inner_lr"] == 0.05 and c["meta_updates"] == 3 for c in configs)
    assert all(c["init"] == "closerlook" and c["test_inner_steps"] == 7 for c in configs)
    assert all(c["val_tasks"] == TINY["val_tasks"] for c in configs)


def test_report_matches_curve_table(tmp_path: Path, finished_grid: Path) -> None:
    out = finished_grid
    runs = [str(p) for p in sorted(out.iterdir()) if (p / "config.yaml").is_file()]
    assert main(["report", *runs, "--out", str(tmp_path / "report")]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "report" / "curve.csv"), pd.read_csv(out / "curve.csv")
    )


def test_report_shows_each_run_at_its_own_test_steps(
    tmp_path: Path, finished_grid: Path, capsys: pytest.CaptureFixture
) -> None:
    """A later evaluation at other inner steps (`evaluate --inner-steps`) does not replace a
    run's cell, so one table never mixes step counts; a run evaluated at other steps only
    is left out with a note, not silently."""
    out = shutil.copytree(finished_grid, tmp_path / "curve")
    runs = sorted(str(p) for p in out.iterdir() if (p / "config.yaml").is_file())
    later, only_other = Path(runs[0]), Path(runs[1])
    for run in (later, only_other):
        argv = ["evaluate", str(run), "--tasks", "5", "--inner-steps", "1", "--device", "cpu"]
        assert main([*argv, "--no-progress"]) == 0
    (only_other / "eval" / f"test-seed0-5tasks-{2 * TINY['inner_steps']}steps.csv").unlink()
    capsys.readouterr()
    assert main(["report", *runs, "--out", str(tmp_path / "report")]) == 0
    note = capsys.readouterr().err
    assert f"{only_other}: left out, no test evaluation at its 2 test-time inner steps" in note
    assert later.name not in note
    table = pd.read_csv(tmp_path / "report" / "curve.csv").set_index("run")
    expected = pd.read_csv(finished_grid / "curve.csv").set_index("run").drop(only_other.name)
    pd.testing.assert_frame_equal(table.sort_index(), expected.sort_index())


def test_report_reads_a_run_config_without_test_steps(tmp_path: Path, finished_grid: Path) -> None:
    """A config.yaml written before it recorded ``test_inner_steps`` counts as the default
    (twice the training steps), as `evaluate` of that run would use."""
    run = sorted(p for p in finished_grid.iterdir() if (p / "config.yaml").is_file())[0]
    copy = shutil.copytree(run, tmp_path / run.name)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    del config["test_inner_steps"]
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 0
    table = pd.read_csv(tmp_path / "report" / "curve.csv")
    expected = pd.read_csv(finished_grid / "curve.csv").set_index("run").loc[run.name]
    assert list(table["run"]) == [run.name]
    assert table["accuracy"].iloc[0] == expected["accuracy"]


@pytest.mark.parametrize(
    ("flags", "change"),
    [
        (["--inner-lr", "0.05"], "inner_lr: 0.01 -> 0.05"),
        (["--test-inner-steps", "3"], "test_inner_steps: 2 -> 3"),
        (["--inner-lr", "0.05", "--jobs", "2"], "inner_lr: 0.01 -> 0.05"),
    ],
)
def test_curve_refuses_a_finished_run_trained_with_other_settings(
    finished_grid: Path, capsys: pytest.CaptureFixture, flags: list[str], change: str
) -> None:
    """Rerunning a grid with a changed flag on the same --out must not report the runs of
    the old settings as the new ones ("finished and evaluated; skipped")."""
    capsys.readouterr()
    assert curve(finished_grid, finished_grid.parent / "tiny.yaml", *flags) == 2
    printed = capsys.readouterr()
    assert "was trained with other settings" in printed.err and change in printed.err
    assert "skipped" not in printed.out


def evaluated_apart(run: Path, folder: Path, capsys: pytest.CaptureFixture, *args: str) -> Path:
    """``metaacdc evaluate`` of a copy of ``run`` without its evaluations (so nothing the
    curve wrote is read or reused); returns the per-task CSV it wrote."""
    copy = folder / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    capsys.readouterr()
    assert main(["evaluate", str(copy), *args, "--device", "cpu", "--no-progress"]) == 0
    written = re.search(r"per-task accuracies: (\S+)", capsys.readouterr().out)
    assert written is not None
    return Path(written.group(1))


def assert_cells_are_evaluations(
    out: Path,
    folder: Path,
    capsys: pytest.CaptureFixture,
    arguments: Callable[[Any], list[str]],
) -> None:
    """Every cell of ``out/curve.csv`` equals ``metaacdc evaluate RUN *arguments(row)`` run
    apart: the mean and 95 % half-width of its CSV, and those recomputed from its per-task
    rows (``1.96 * std / sqrt(n)``, population std)."""
    table = pd.read_csv(out / "curve.csv")
    assert len(table) > 0
    for row in table.itertuples(index=False):
        written = evaluated_apart(out / str(row.run), folder, capsys, *arguments(row))
        csv = pd.read_csv(written, dtype={"task": str})
        summary = csv.set_index("task")["accuracy"]
        per_task = csv[csv["task"].str.isdigit()]["accuracy"].to_numpy()
        assert row.tasks == len(per_task)
        mean, ci95 = per_task.mean(), 1.96 * per_task.std() / np.sqrt(len(per_task))
        assert summary["mean"] == pytest.approx(mean, abs=1e-9)
        assert summary["ci95"] == pytest.approx(ci95, abs=1e-9)
        # the curve's table keeps 4 decimals of a percentage
        assert row.accuracy == pytest.approx(100 * mean, abs=1e-4), row.run
        assert row.ci95 == pytest.approx(100 * ci95, abs=1e-4), row.run


def test_curve_cells_equal_metaacdc_evaluate_of_each_run(
    tmp_path: Path, finished_grid: Path, capsys: pytest.CaptureFixture
) -> None:
    """A cell is the run's test accuracy on the tasks `metaacdc evaluate` draws (seed 0),
    not only a number between 0 and 100."""
    assert_cells_are_evaluations(finished_grid, tmp_path, capsys, lambda row: ["--tasks", "5"])


def test_curve_skips_runs_another_process_works_on(tmp_path, base_config, capsys) -> None:
    """Two `curve` commands on one --out share the grid: a run claimed by one is skipped by
    the other, whose report lacks it until a later pass."""
    out = tmp_path / "curve"
    busy = out / "conv4-plain-synthetic-5w1s-seed0"
    with claim(training_lock(busy), "training"):
        assert curve(out, base_config) == 0
    printed = capsys.readouterr().out
    assert printed.count("in progress in another process; skipped") == 1
    assert "1 run(s) left to the other process(es)" in printed
    assert not RunFolder(busy).last.exists()
    assert len(pd.read_csv(out / "curve.csv")) == 3
    assert curve(out, base_config) == 0
    assert busy.name in set(pd.read_csv(out / "curve.csv")["run"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["curve", "--acdc", "everything"], "--acdc='everything' is not valid"),
        (
            ["curve", "--backbones", "vgg16"],
            "backbone='vgg16' is not valid; accepted values: conv4",
        ),
        (["report", "/no/such/run"], "not a run folder"),
        (["curve", "--eval-processes", "0"], "--eval-processes=0"),
    ],
)
def test_errors_exit_2_with_one_line(
    argv: list[str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert message in run_in_process(argv, capfd).one_error_line()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["curve", "--acdc", "everything"], "--acdc='everything' is not valid"),
        (["report", "/no/such/run"], "not a run folder"),
    ],
    ids=["curve", "report"],
)
def test_an_error_is_one_line_in_a_real_process(argv: list[str], message: str) -> None:
    """One case of each command as the console script runs it; the tables run in this
    process."""
    assert message in run_process(argv).one_error_line()


def _table(dataset: str, ways: int = 5) -> pd.DataFrame:
    rows = [
        (f"{b}-{c}", b, depth, c, dataset, ways, s, 10, 50.0 + depth / 10, 1.0)
        for s in (1, 5)
        for b, depth in (("conv4", 4), ("resnet10", 10))
        for c in ("plain", "acdc-net")
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_references_are_the_published_numbers() -> None:
    closerlook = REFERENCES[REFERENCES["source"] == "CloserLook MAML (reference)"]
    assert len(closerlook) == 10 and set(closerlook["backbone"]) == set(DEPTH_STUDY)
    by_key = REFERENCES.set_index(["source", "backbone", "shots"])
    assert by_key.loc[("CloserLook MAML (reference)", "resnet18", 1), "accuracy"] == 49.61
    assert by_key.loc[("CloserLook MAML (reference)", "resnet34", 5), "ci95"] == 0.79
    assert by_key.loc[("MAML paper, Conv4-32 (reference)", "conv4", 5), "accuracy"] == 63.11


def test_references_only_for_five_way_miniimagenet() -> None:
    assert references_for(_table("miniimagenet")) is REFERENCES
    assert references_for(_table("synthetic")) is None
    assert references_for(_table("miniimagenet", ways=20)) is None


def _legend(table: pd.DataFrame, references: pd.DataFrame | None) -> list[list[str]]:
    figure = plot_curve(table, references)
    labels = [[t.get_text() for t in axis.get_legend().get_texts()] for axis in figure.axes]
    plt.close(figure)
    return labels


def test_plot_draws_references_as_extra_series() -> None:
    table = _table("miniimagenet")
    references = ["CloserLook MAML (reference)", "MAML paper, Conv4-32 (reference)"]
    assert _legend(table, None) == [["MAML (acdc-net)", "MAML (plain)"]] * 2
    assert _legend(table, REFERENCES) == [["MAML (acdc-net)", "MAML (plain)", *references]] * 2


def test_report_reference_option(tmp_path, base_config) -> None:
    out = tmp_path / "curve"
    grid = ["--shots", "1", "--backbones", "conv4", "--acdc", "none", "--tasks", "5"]
    assert main(["curve", *grid, "--config", str(base_config), "--out", str(out)]) == 0
    run = str(out / "conv4-plain-synthetic-5w1s-seed0")
    images = {}
    for choice in ("auto", "none", "closerlook"):
        assert main(["report", run, "--out", str(tmp_path / choice), "--reference", choice]) == 0
        images[choice] = (tmp_path / choice / "curve.png").read_bytes()
    # synthetic runs: no miniImageNet references unless asked for
    assert images["auto"] == images["none"] != images["closerlook"]


def test_curve_hands_eval_processes_to_the_evaluator(
    tmp_path: Path, base_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import metaacdc.evaluation.run

    asked = []

    def evaluate(*args, processes: int, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(processes)
        return real(*args, processes=1, **kwargs)  # the pool itself: test_evaluation_pool

    real = metaacdc.evaluation.run.evaluate
    monkeypatch.setattr(metaacdc.evaluation.run, "evaluate", evaluate)
    grid = ["--shots", "1", "--backbones", "conv4", "--acdc", "none", "--tasks", "2"]
    out = str(tmp_path / "curve")
    argv = ["curve", *grid, "--config", str(base_config), "--out", out, "--eval-processes", "3"]
    assert main(argv) == 0
    assert asked == [3]


def test_curve_estimate_prints_and_runs_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "curve"
    argv = ["curve", "--backbones", "conv4", "resnet10", "--shots", "1", "--image-size", "16"]
    assert main([*argv, "--out", str(out), "--estimate"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ESTIMATE, not a measurement")
    assert len([line for line in text.splitlines() if line.startswith(("conv4", "resnet10"))]) == 4
    assert "total" in text and not out.exists()


@pytest.fixture
def tiny_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    prepare = "data prepare --source synthetic --image-size 16 --images-per-class 12"
    assert main([*prepare.split(), "--out", str(cache), "--no-progress"]) == 0
    return cache


def test_curve_tests_every_run_on_its_frozen_episodes(
    tmp_path, base_config, tiny_cache, capsys
) -> None:
    manifests = []
    for shots in (1, 5):
        manifests.append(tmp_path / f"tiny-test-5w{shots}s-3q.json")
        freeze = f"data freeze --shots {shots} --queries 3 --tasks 4"
        cache = ["--cache", str(tiny_cache / "test")]
        assert main([*freeze.split(), *cache, "--out", str(manifests[-1])]) == 0
    out = tmp_path / "curve"
    extra = ["--data", str(tiny_cache), "--episodes", *map(str, manifests), "--tasks", "4"]
    assert curve(out, base_config, *extra) == 0
    evaluations = sorted(p.name for p in out.glob("*/eval/*.csv"))
    assert evaluations == sorted(
        # one training step, twice at test by default
        [f"test-tiny-test-5w{s}s-3q-4tasks-2steps.csv" for s in (1, 5) for _ in range(2)]
    )
    assert (pd.read_csv(out / "curve.csv")["tasks"] == 4).all()
    # each cell is `metaacdc evaluate --episodes` of the manifest of its run's task shape
    by_shots = dict(zip((1, 5), manifests))
    assert_cells_are_evaluations(
        out, tmp_path, capsys, lambda row: ["--episodes", str(by_shots[row.shots])]
    )


def test_data_by_image_size(tmp_path, tiny_cache) -> None:
    assert data_by_image_size([str(tiny_cache)]) == {16: str(tiny_cache)}
    with pytest.raises(ConfigError, match="both 16px caches"):
        data_by_image_size([str(tiny_cache), str(tiny_cache)])
    with pytest.raises(ConfigError, match="not a prepared cache"):
        data_by_image_size([str(tmp_path)])


def test_shipped_manifests_by_task_shape() -> None:
    paths = sorted((REPO / "episodes").glob("miniimagenet-test-*.json"))
    assert set(manifests_by_task_shape(paths)) == {(5, 1), (5, 5)}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--episodes", "episodes/miniimagenet-test-5w1s-15q.json"], "no --episodes manifest of"),
        (["--data", "a", "b"], "--data a: not a prepared cache"),
        (["--inner-lr", "0"], "inner_lr=0.0 is not valid (expected a finite number > 0)"),
        (["--inner-lr", "fast"], "argument --inner-lr: invalid float value: 'fast'"),
        (["--init", "xavier"], "init='xavier' is not valid"),
        (["--test-inner-steps", "0"], "test_inner_steps=0 is not valid"),
    ],
)
def test_curve_option_errors(
    tmp_path, base_config, extra, message, capfd: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(REPO)  # the relative paths above are the repository's
    argv = ["curve", "--backbones", "conv4", "--config", str(base_config), *extra]
    outcome = run_in_process([*argv, "--out", str(tmp_path / "c")], capfd)
    assert message in outcome.one_error_line()
