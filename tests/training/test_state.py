"""The checkpointed training state and the run folder's metrics file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metaacdc.runs.folder import RunFolder
from metaacdc.training import TrainState
from metaacdc.training.trainer import METRICS


def test_state_reads_a_checkpoint_with_or_without_an_owed_validation() -> None:
    payload = {"step": 7, "best_val": 0.5, "best_step": 5, "owed_validation": [1.0, 0.2, 3.0, 4.0]}
    assert TrainState.from_checkpoint(payload) == TrainState(7, 0.5, 5, [1.0, 0.2, 3.0, 4.0])
    del payload["owed_validation"]  # checkpoints written before validations could be owed
    assert TrainState.from_checkpoint(payload) == TrainState(7, 0.5, 5, None)


def test_metrics_rows_follow_the_header(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.start_metrics(METRICS)
    folder.append_metrics((100, 1.5, 0.4, 0.45, 0.02, 3.0, 60.0))
    folder.append_metrics((200, 1.2, 0.5, 0.5, 0.02, 3.1, 120.0))
    table = pd.read_csv(folder.metrics)
    assert tuple(table.columns) == METRICS
    assert table["step"].tolist() == [100, 200] and table["val_accuracy"].tolist() == [0.45, 0.5]
