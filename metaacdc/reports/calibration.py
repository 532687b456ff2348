"""`metaacdc curve --estimate --calibration CSV`: the cost model rescaled by measured runs.

:mod:`metaacdc.reports.estimate` models the learn2learn engine launching every kernel from
Python, fitted on one H100. The batched engine, and CUDA-graph capture on top of it
(``--cuda-graphs``), launch far fewer kernels, so that model overstates their hours by a
factor it cannot know. ``scripts/bench_gpu_runs.py --csv`` measures, per run of the grid
and per arm (engine and capture), the seconds of a meta-update and of an evaluation task
(:mod:`metaacdc.reports.gpu_runs`); :func:`fit_scales` turns those into one scale per arm:
the median over the measured runs of measured over estimated hours, both for the same
config (the measured seconds projected over the run the estimate models), so the scale
does not depend on the run length the bench assumed. :func:`calibrated_estimates` applies
the scale of the arm a grid would use on a GPU. Peak memory is left as estimated.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from metaacdc.config import TrainConfig
from metaacdc.maml.engine import choose_engine
from metaacdc.reports.estimate import estimate_grid, format_estimates
from metaacdc.reports.gpu_runs import (
    Arm,
    arm_name,
    projected_hours,
    read_bench_csv,
    run_configs,
)
from metaacdc.runtime.cuda_graphs import wants_graphs


@dataclass(frozen=True)
class ArmScale:
    """Measured over estimated hours of one arm: the median and range over ``runs`` runs."""

    arm: Arm
    scale: float
    low: float
    high: float
    runs: int


def same_protocol(config: TrainConfig, row: pd.Series) -> bool:
    """Whether ``row`` measured ``config``'s model and task: its order and image size (a
    ``--dry-run`` table, at 32 px, does not)."""
    order = "1st" if config.first_order else "2nd"
    return bool(row["order"] == order and int(row["px"]) == config.image_size)


def fit_scales(
    table: pd.DataFrame,
    configs: Sequence[TrainConfig],
    estimated_hours: Sequence[float],
    test_tasks: int,
) -> dict[Arm, ArmScale]:
    """Per arm of ``table``, the median over its rows of measured / estimated hours.

    Args:
        table: rows of :func:`~metaacdc.reports.gpu_runs.read_bench_csv`.
        configs: each row's resolved config (:func:`~metaacdc.reports.gpu_runs.run_configs`);
            the measured seconds are projected over it. Rows that measured another order or
            image size than their config's are left out.
        estimated_hours: each row's estimated hours, for its config and ``test_tasks``.
        test_tasks: test tasks of the runs.
    """
    ratios: dict[Arm, list[float]] = {}
    for (_, row), config, estimated in zip(table.iterrows(), configs, estimated_hours):
        if not same_protocol(config, row):
            continue
        measured = projected_hours(config, row["update_s"], row["eval_task_s"], test_tasks)
        arm = (str(row["engine"]), str(row["graphs"]))
        ratios.setdefault(arm, []).append(measured / estimated)
    return {
        arm: ArmScale(arm, statistics.median(values), min(values), max(values), len(values))
        for arm, values in ratios.items()
    }


def gpu_arm(config: TrainConfig) -> Arm:
    """The arm ``config``'s runs take on a CUDA device: ``--engine auto`` is the batched
    engine there, and ``--cuda-graphs auto`` captures its steps.

    Raises:
        ConfigError: an unknown engine, or ``--cuda-graphs on`` with the learn2learn engine.
    """
    cuda = torch.device("cuda")
    engine = choose_engine(config.engine, cuda)
    return engine, "on" if wants_graphs(config.cuda_graphs, cuda, engine=engine) else "off"


def calibrated_estimates(
    base: TrainConfig, configs: list[TrainConfig], csv: Path, test_tasks: int
) -> str:
    """``metaacdc curve --estimate --calibration CSV``: the estimate of ``configs`` with
    their hours scaled for the arm ``base`` takes on a GPU (:func:`gpu_arm`), fitted on the
    bench table ``csv``; where ``csv`` holds no measurement of that arm on this protocol's
    runs, one line saying so and the estimate as it is.

    Raises:
        ConfigError: as :func:`~metaacdc.reports.gpu_runs.read_bench_csv` and
            :func:`gpu_arm`.
    """
    table = read_bench_csv(csv, "--calibration")  # refused before minutes of counting
    arm = gpu_arm(base)
    rows = table[(table["engine"] == arm[0]) & (table["graphs"] == arm[1])]
    measured_configs = run_configs(base, rows)
    estimates = estimate_grid([*configs, *measured_configs], test_tasks)  # counted once
    grid_estimates, row_estimates = estimates[: len(configs)], estimates[len(configs) :]
    fitted = fit_scales(rows, measured_configs, [e.hours for e in row_estimates], test_tasks)
    if arm not in fitted:
        return (
            f"{csv} has no measurement of the {arm_name(arm)} arm at these runs' order and "
            "image size: the estimate below is not calibrated\n" + format_estimates(grid_estimates)
        )
    scale = fitted[arm]
    scaled = [dataclasses.replace(e, hours=e.hours * scale.scale) for e in grid_estimates]
    return (
        f"CALIBRATED for the {arm_name(arm)} arm: hours x {scale.scale:.3g}, the median of "
        f"measured/estimated hours over {scale.runs} run(s) in {csv} (range "
        f"{scale.low:.3g}-{scale.high:.3g}); peak memory is not calibrated\n"
        + format_estimates(scaled)
    )
