"""`metaacdc curve --estimate --calibration CSV`: the cost model rescaled per arm by a table
of measured runs (scripts/bench_gpu_runs.py --csv), on hand-written tables and given
estimates (the operator counting behind a real estimate takes minutes)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from metaacdc.config import TrainConfig, resolve
from metaacdc.errors import ConfigError
from metaacdc.reports import calibration
from metaacdc.reports.calibration import calibrated_estimates, fit_scales, gpu_arm
from metaacdc.reports.estimate import RunEstimate
from metaacdc.reports.gpu_runs import Arm, read_bench_csv, run_configs
from tests.command_line import run_in_process

#: 100 updates, 2 validations of 10 tasks; 16 px Conv4 is second order
TINY = TrainConfig(image_size=16, meta_updates=100, val_every=50, val_tasks=10, test_inner_steps=5)


#: a bench table (scripts/bench_gpu_runs.py --csv) of TINY's runs: measured seconds that
#: project to 1, 2 and 3 h (batched, graphs on), 10 h (learn2learn), and a dry run's 32 px
#: row that measured another task; the ``hours`` column is the bench's, not used
BENCH = """backbone,conv,shots,order,px,engine,graphs,update_s,eval_task_s,peak_gib,hours
conv4,plain,1,2nd,16,batched,on,24,10,1.0,99
conv4,acdc-net,1,2nd,16,batched,on,48,20,1.0,99
conv4,plain,5,2nd,16,batched,on,72,30,1.0,99
conv4,plain,1,2nd,16,learn2learn,off,240,100,1.0,99
conv4,plain,1,2nd,32,batched,off,24,10,,99
"""


def bench_csv(tmp_path: Path, text: str = BENCH) -> Path:
    csv = tmp_path / "gpu_runs.csv"
    csv.write_text(text)
    return csv


def test_a_bench_table_fits_one_scale_per_arm(tmp_path: Path) -> None:
    table = read_bench_csv(bench_csv(tmp_path), "--calibration")
    configs = run_configs(TINY, table)
    # 100 updates and (2 validations x 10 + 100 test) tasks at the measured seconds
    scales = fit_scales(table, configs, [1.0] * len(table), test_tasks=100)
    assert scales.keys() == {("batched", "on"), ("learn2learn", "off")}  # 32 px left out
    captured = scales[("batched", "on")]
    assert (captured.scale, captured.low, captured.high, captured.runs) == pytest.approx(
        (2.0, 1.0, 3.0, 3)
    )
    assert scales[("learn2learn", "off")].scale == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no such file"),
        ("", "not a CSV (EmptyDataError)"),
        ("backbone,conv\nconv4,plain\n", "not a CSV written by --csv of scripts/bench_gpu"),
        (BENCH.replace(",24,10,", ",fast,10,", 1), "column update_s holds other than positive"),
    ],
    ids=["missing", "empty", "other-columns", "words"],
)
def test_a_bad_bench_table_is_refused(tmp_path: Path, text: str | None, message: str) -> None:
    csv = tmp_path / "gpu_runs.csv" if text is None else bench_csv(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(f"--calibration {csv}: {message}")):
        read_bench_csv(csv, "--calibration")


def test_an_older_bench_table_is_the_learn2learn_engine_without_capture(tmp_path: Path) -> None:
    older = BENCH.replace(",engine,graphs", "").replace(",batched,on", "")
    older = older.replace(",learn2learn,off", "").replace(",batched,off", "")
    table = read_bench_csv(bench_csv(tmp_path, older), "--compare")
    assert set(zip(table["engine"], table["graphs"])) == {("learn2learn", "off")}


@pytest.mark.parametrize(
    ("engine", "graphs", "arm"),
    [
        ("auto", "auto", ("batched", "on")),
        ("batched", "off", ("batched", "off")),
        ("learn2learn", "auto", ("learn2learn", "off")),
    ],
)
def test_the_arm_is_the_one_a_gpu_run_takes(engine: str, graphs: str, arm: Arm) -> None:
    assert gpu_arm(dataclasses.replace(TINY, engine=engine, cuda_graphs=graphs)) == arm


def test_capture_with_the_learn2learn_engine_is_refused() -> None:
    with pytest.raises(ConfigError, match="--cuda-graphs on"):
        gpu_arm(dataclasses.replace(TINY, engine="learn2learn", cuda_graphs="on"))


def one_hour_each(configs: list[TrainConfig], test_tasks: int) -> list[RunEstimate]:
    """``estimate_grid`` without counting: 1 GPU hour per run."""
    return [RunEstimate(resolve(c), 1.0, 1.0, hours=1.0, peak_gib=1.0) for c in configs]


@pytest.mark.parametrize(
    ("engine", "graphs", "first_line", "total"),
    [
        ("auto", "auto", "CALIBRATED for the batched, graphs on arm: hours x 2,", 2.0),
        ("learn2learn", "auto", "CALIBRATED for the learn2learn, graphs off arm: hours x 10,", 10),
        ("batched", "off", "has no measurement of the batched, graphs off arm", 1.0),
    ],
    ids=["auto", "learn2learn", "absent"],
)
def test_the_estimate_is_scaled_for_the_arm_or_says_it_is_not(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
    graphs: str,
    first_line: str,
    total: float,
) -> None:
    monkeypatch.setattr(calibration, "estimate_grid", one_hour_each)
    base = dataclasses.replace(TINY, engine=engine, cuda_graphs=graphs)
    configs = [resolve(base)]
    text = calibrated_estimates(base, configs, bench_csv(tmp_path), test_tasks=100)
    assert first_line in text.splitlines()[0]
    assert f"total {total:.1f} GPU hours for 1 runs" in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--estimate --calibration {missing}", "no such file"),
        ("--calibration {csv}", "give --estimate too"),
        ("--estimate --calibration {csv} --engine learn2learn --cuda-graphs on", "graphs on"),
        ("--estimate --calibration {csv} --cuda-graphs yes", "cuda_graphs"),
    ],
    ids=["missing", "without-estimate", "learn2learn-capture", "unknown-mode"],
)
def test_curve_refuses_a_bad_calibration_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], flags: str, message: str
) -> None:
    paths = {"missing": tmp_path / "missing.csv", "csv": bench_csv(tmp_path)}
    argv = ["curve", "--backbones", "conv4", "--shots", "1", *flags.format(**paths).split()]
    assert message in run_in_process(argv, capfd).one_error_line()
