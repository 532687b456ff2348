"""The table of measured GPU runs that ``scripts/bench_gpu_runs.py --csv`` writes: its
format, reading it back, and what it says about the arms it measured.

A row is one run of the depth-curve grid (:data:`RUN`) measured with one arm (:data:`ARM`:
the MAML engine, and whether its steps replay CUDA graphs), holding seconds per
meta-update and per evaluation task, peak GPU memory, and the whole run's projected hours
(:func:`projected_hours`). The bench prints :func:`arm_comparison` and :func:`target_lines`
after measuring, and ``metaacdc curve --estimate --calibration`` fits the cost model to
such a table (:mod:`metaacdc.reports.calibration`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from metaacdc.backbones import DEPTH_STUDY
from metaacdc.config import TrainConfig
from metaacdc.errors import ConfigError
from metaacdc.reports.curves import grid

#: Columns naming a run of the grid.
RUN = ("backbone", "conv", "shots", "order", "px")
#: Columns naming an arm: the MAML engine and whether its steps replay CUDA graphs.
ARM = ("engine", "graphs")
#: Columns measured per run and arm: seconds per meta-update and per evaluation task, peak
#: GPU GiB, and the projected hours of the whole run.
MEASURED = ("update_s", "eval_task_s", "peak_gib", "hours")
#: Columns of the table.
COLUMNS = (*RUN, *ARM, *MEASURED)
#: What tables written before a column existed measured: the learn2learn engine, no capture.
OLDER_CSVS = {"engine": "learn2learn", "graphs": "off"}
#: Columns that must hold positive numbers in every row (peak memory is NaN off CUDA).
POSITIVE = ("shots", "px", "update_s", "eval_task_s")
#: (engine, graphs), e.g. ``("batched", "on")``
Arm = tuple[str, str]
#: The arm every other is compared with.
REFERENCE: Arm = ("learn2learn", "off")
#: The arm CUDA-graph capture is judged by.
CAPTURED: Arm = ("batched", "on")
#: The targets of CUDA-graph capture: Conv4 5-way 1-shot second order per meta-update, the
#: speed-up of every run over the learn2learn engine (projected hours), and the paper
#: grid's GPU hours.
TARGET_CONV4_UPDATE_S = 0.020
TARGET_SPEEDUP = 5.0
TARGET_GRID_HOURS = 10.0
#: Runs of the paper grid: 1 and 5 shots, plain MAML and ACDC-net, every depth.
PAPER_GRID_RUNS = 2 * 2 * len(DEPTH_STUDY)


def arm_name(arm: Arm) -> str:
    """``batched, graphs on``: how messages name an arm."""
    engine, graphs = arm
    return f"{engine}, graphs {graphs}"


def projected_hours(config: TrainConfig, update_s: float, eval_task_s: float, tests: int) -> float:
    """GPU hours of the whole run of resolved ``config`` at the given seconds per
    meta-update and per evaluation task: every meta-update, a validation of ``val_tasks``
    tasks every ``val_every`` updates, and ``tests`` test tasks (as the estimate counts)."""
    assert config.meta_updates is not None
    validations = math.ceil(config.meta_updates / config.val_every)
    evaluations = validations * config.val_tasks + tests
    return (config.meta_updates * update_s + evaluations * eval_task_s) / 3600


def read_bench_csv(path: Path, option: str) -> pd.DataFrame:
    """The :data:`COLUMNS` of a table ``scripts/bench_gpu_runs.py --csv`` wrote (one
    written before ``engine`` or ``graphs`` existed gets :data:`OLDER_CSVS`).

    Args:
        path: the CSV.
        option: the flag that named it, for the messages (``--calibration``).

    Raises:
        ConfigError: no such file, not such a table, or a :data:`POSITIVE` column holding
            anything else.
    """
    where = f"{option} {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ConfigError(f"{where}: not a CSV ({type(error).__name__})") from error
    for column, value in OLDER_CSVS.items():
        if column not in table.columns:
            table[column] = value
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise ConfigError(
            f"{where}: not a CSV written by --csv of scripts/bench_gpu_runs.py "
            f"(no column {', '.join(missing)})"
        )
    for column in POSITIVE:
        numbers = pd.to_numeric(table[column], errors="coerce")
        if not (numbers > 0).all():  # NaN (a word, an empty cell) fails too
            raise ConfigError(f"{where}: column {column} holds other than positive numbers")
        table[column] = numbers
    return table[list(COLUMNS)]


def run_configs(base: TrainConfig, table: pd.DataFrame) -> list[TrainConfig]:
    """The resolved config of each row's run (backbone, conv, shots), the rest from
    ``base``, as ``metaacdc curve`` builds its grid."""
    return [
        grid(base, [int(shots)], [str(backbone)], [str(conv)])[0]
        for shots, backbone, conv in zip(
            table["shots"].tolist(), table["backbone"].tolist(), table["conv"].tolist()
        )
    ]


def by_arm(table: pd.DataFrame) -> dict[Arm, pd.DataFrame]:
    """The :data:`MEASURED` columns of each arm of ``table``, indexed by :data:`RUN`."""
    return {
        (str(engine), str(graphs)): rows.set_index(list(RUN))[list(MEASURED)]
        for (engine, graphs), rows in table.groupby(list(ARM), sort=False)
    }


def _numbers(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3g}")


def arm_comparison(table: pd.DataFrame) -> str:
    """Projected GPU hours of the grid per arm and, where :data:`REFERENCE` was measured,
    each run's ratios of every other arm to it, with their ranges."""
    arms = by_arm(table)
    listed = ", ".join(
        f"{arm_name(arm)} {rows['hours'].sum():.1f} h ({len(rows)} runs)"
        for arm, rows in arms.items()
    )
    parts = [f"projected GPU hours of the grid per arm: {listed}"]
    for arm, rows in arms.items():
        if arm == REFERENCE or REFERENCE not in arms:
            continue
        ratios = (rows / arms[REFERENCE]).dropna(how="all")
        spans = ", ".join(
            f"{column} {ratios[column].min():.2f}-{ratios[column].max():.2f}" for column in MEASURED
        )
        parts.append(
            f"{arm_name(arm)} / {arm_name(REFERENCE)}, per run:\n"
            f"{_numbers(ratios.reset_index())}\nranges: {spans}"
        )
    return "\n\n".join(parts)


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _conv4_lines(captured: pd.DataFrame) -> list[str]:
    """Each captured Conv4 5-way 1-shot second-order run's time per meta-update."""
    runs = captured.reset_index()
    chosen = runs[(runs["backbone"] == "conv4") & (runs["shots"] == 1) & (runs["order"] == "2nd")]
    limit_ms = 1000 * TARGET_CONV4_UPDATE_S
    if chosen.empty:
        return [f"Conv4 1-shot second order <= {limit_ms:g} ms per meta-update: not measured"]
    return [
        f"Conv4 {conv} 1-shot second order: {1000 * update_s:.1f} ms per meta-update, target "
        f"<= {limit_ms:g} ms: {_verdict(update_s <= TARGET_CONV4_UPDATE_S)}"
        for conv, update_s in zip(chosen["conv"], chosen["update_s"])
    ]


def _speedup_line(captured: pd.DataFrame, reference: pd.DataFrame | None) -> str:
    """The captured runs' speed-ups over the learn2learn engine (projected hours)."""
    target = f"every run >= {TARGET_SPEEDUP:g}x the learn2learn engine (projected hours)"
    speedups = (
        pd.Series(dtype=float) if reference is None else reference["hours"] / captured["hours"]
    ).dropna()
    if speedups.empty:
        return f"{target}: no run measured with both"
    slowest = " ".join(str(part) for part in speedups.sort_values().index[0])
    at_target = int((speedups >= TARGET_SPEEDUP).sum())
    return (
        f"{target}: {speedups.min():.2f}x ({slowest}) to {speedups.max():.2f}x, {at_target} "
        f"of {len(speedups)} runs at target: {_verdict(at_target == len(speedups))}"
    )


def _grid_line(captured: pd.DataFrame) -> str:
    """The captured grid's projected hours; only the whole paper grid can meet the target."""
    hours, runs = float(captured["hours"].sum()), len(captured)
    if hours > TARGET_GRID_HOURS:
        outcome = _verdict(False)
    elif runs < PAPER_GRID_RUNS:
        outcome = f"unknown, {runs} of the paper grid's {PAPER_GRID_RUNS} runs measured"
    else:
        outcome = _verdict(True)
    return f"grid <= {TARGET_GRID_HOURS:g} GPU hours: {hours:.1f} h over {runs} runs: {outcome}"


def target_lines(table: pd.DataFrame) -> list[str]:
    """Whether the measured numbers meet the targets of CUDA-graph capture, judged on the
    :data:`CAPTURED` arm: one line per target (one per Conv4 run for the first); none
    where that arm was not measured."""
    arms = by_arm(table)
    if CAPTURED not in arms:
        return []
    captured = arms[CAPTURED]
    return [
        *_conv4_lines(captured),
        _speedup_line(captured, arms.get(REFERENCE)),
        _grid_line(captured),
    ]
