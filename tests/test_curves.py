"""`metaacdc curve` runs, resumes and skips the grid; `metaacdc report` tables and plots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from metaacdc.cli import main
from metaacdc.curves import COLUMNS, DEPTHS

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


@pytest.fixture
def base_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


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


def test_curve_runs_the_grid_then_skips_finished_runs(tmp_path, base_config, capsys) -> None:
    out = tmp_path / "curve"
    assert curve(out, base_config) == 0
    table = pd.read_csv(out / "curve.csv")
    assert tuple(table.columns) == COLUMNS
    assert sorted(zip(table["shots"], table["conv"])) == [
        (1, "acdc-net"),
        (1, "plain"),
        (5, "acdc-net"),
        (5, "plain"),
    ]
    assert (table["tasks"] == 5).all() and table["accuracy"].between(0, 100).all()
    assert (table["depth"] == DEPTHS["conv4"]).all()
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


def test_report_matches_curve_table(tmp_path, base_config) -> None:
    out = tmp_path / "curve"
    assert curve(out, base_config) == 0
    runs = [str(p) for p in sorted(out.iterdir()) if (p / "config.yaml").is_file()]
    assert main(["report", *runs, "--out", str(tmp_path / "report")]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "report" / "curve.csv"), pd.read_csv(out / "curve.csv")
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["curve", "--acdc", "everything"], "--acdc='everything' is not valid"),
        (["curve", "--backbones", "vgg16"], "backbones vgg16 are not in the depth study"),
        (["report", "/no/such/run"], "not a run folder"),
    ],
)
def test_errors_exit_2_with_one_line(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metaacdc", *argv], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
