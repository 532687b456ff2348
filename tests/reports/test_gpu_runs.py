"""What a table of measured GPU runs (scripts/bench_gpu_runs.py --csv) says: every arm's
ratios to the learn2learn engine's, and the verdicts on the targets of CUDA-graph capture,
from the numbers alone."""

from __future__ import annotations

import pandas as pd

from metaacdc.reports.gpu_runs import COLUMNS, PAPER_GRID_RUNS, arm_comparison, target_lines


def table(*rows: tuple[str, str, str, float, float]) -> pd.DataFrame:
    """Runs of 1-shot second-order Conv4 at 84 px: (conv, engine, graphs, update_s, hours)."""
    return pd.DataFrame(
        [
            ("conv4", conv, 1, "2nd", 84, engine, graphs, update_s, 0.01, 1.0, hours)
            for conv, engine, graphs, update_s, hours in rows
        ],
        columns=list(COLUMNS),
    )


FAST = table(
    ("plain", "learn2learn", "off", 0.200, 3.0),
    ("plain", "batched", "on", 0.015, 0.5),
    ("plain", "batched", "off", 0.050, 1.0),
    ("acdc-net", "learn2learn", "off", 0.300, 4.0),
    ("acdc-net", "batched", "on", 0.025, 1.0),
)


def test_every_arm_is_set_against_the_learn2learn_engine_run_by_run() -> None:
    text = arm_comparison(FAST)
    assert text.startswith(
        "projected GPU hours of the grid per arm: learn2learn, graphs off 7.0 h (2 runs), "
        "batched, graphs on 1.5 h (2 runs), batched, graphs off 1.0 h (1 runs)"
    )
    assert "batched, graphs on / learn2learn, graphs off, per run:" in text
    assert "ranges: update_s 0.07-0.08, eval_task_s 1.00-1.00" in text
    assert "hours 0.17-0.25" in text


def test_the_targets_are_judged_on_the_captured_arm() -> None:
    assert target_lines(FAST) == [
        "Conv4 plain 1-shot second order: 15.0 ms per meta-update, target <= 20 ms: met",
        "Conv4 acdc-net 1-shot second order: 25.0 ms per meta-update, target <= 20 ms: NOT met",
        "every run >= 5x the learn2learn engine (projected hours): 4.00x (conv4 acdc-net 1 "
        "2nd 84) to 6.00x, 1 of 2 runs at target: NOT met",
        f"grid <= 10 GPU hours: 1.5 h over 2 runs: unknown, 2 of the paper grid's "
        f"{PAPER_GRID_RUNS} runs measured",
    ]


def test_a_partial_grid_over_the_hours_already_misses_them() -> None:
    slow = table(("plain", "batched", "on", 0.015, 11.0))
    assert target_lines(slow)[-1] == "grid <= 10 GPU hours: 11.0 h over 1 runs: NOT met"
    assert target_lines(slow)[-2].endswith("no run measured with both")


def test_the_whole_grid_within_the_hours_meets_them() -> None:
    whole = table(*[("plain", "batched", "on", 0.015, 0.4)] * PAPER_GRID_RUNS)
    assert target_lines(whole)[-1] == (
        f"grid <= 10 GPU hours: 8.0 h over {PAPER_GRID_RUNS} runs: met"
    )


def test_no_captured_arm_no_verdict() -> None:
    assert target_lines(table(("plain", "batched", "off", 0.015, 1.0))) == []
