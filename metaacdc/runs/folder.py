"""The layout of a run folder, and checkpoints of a meta-learner in it.

RUN_DIR/config.yaml          resolved TrainConfig (enough to re-run or evaluate)
RUN_DIR/data.json            the data read: --data as given, the cache used, its checksums
RUN_DIR/metrics.csv          one row per validation: step, losses, accuracies, speed
RUN_DIR/log.txt              human-readable log
RUN_DIR/checkpoints/last.pt  latest state (resume from here)
RUN_DIR/checkpoints/best.pt  best validation accuracy so far (evaluate this)
RUN_DIR/eval/*.csv           evaluation results
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from metaacdc.config import TrainConfig
from metaacdc.data.facts import DataFacts
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.checkpoint import load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def evaluations(self) -> Path:
        return self.root / "eval"

    def write_config(self, config: TrainConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    def write_data(self, record: dict[str, Any]) -> None:
        """``data.json``: which data the run read (:func:`metaacdc.runs.experiment.data_record`:
        the ``--data`` given, the cache folder, each split's checksums), written atomically.
        A resumed run rewrites it; the checksums say whether its data changed."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.data.with_name(self.data.name + ".partial")
        partial.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(partial, self.data)

    def start_metrics(self, columns: Sequence[str]) -> None:
        """A new metrics.csv holding only its header row."""
        with self.metrics.open("w", newline="") as stream:
            csv.writer(stream).writerow(columns)

    def append_metrics(self, row: Sequence[object]) -> None:
        """One row appended to metrics.csv."""
        with self.metrics.open("a", newline="") as stream:
            csv.writer(stream).writerow(row)

    def drop_metrics_from(self, step: int) -> None:
        """Remove the rows of meta-update ``step`` and later from metrics.csv (atomically):
        a resumed run writes them again, and a row written after the checkpoint it resumes
        from (an interruption between the two) would otherwise appear twice."""
        with self.metrics.open(newline="") as stream:
            header, *rows = list(csv.reader(stream))
        kept = [row for row in rows if int(row[0]) < step]
        if len(kept) == len(rows):
            return
        partial = self.metrics.with_name(self.metrics.name + ".partial")
        with partial.open("w", newline="") as stream:
            csv.writer(stream).writerows([header, *kept])
        os.replace(partial, self.metrics)


def run_name(config: TrainConfig) -> str:
    """Default folder name of a run: backbone, conv kind, dataset, task shape and seed."""
    task = f"{config.ways}w{config.shots}s"
    return f"{config.backbone}-{config.conv}-{config.dataset}-{task}-seed{config.seed}"


def checkpoint_payload(
    config: TrainConfig,
    data: DataFacts,
    step: int,
    learner: MetaLearner,
    optimizer: torch.optim.Optimizer | None = None,
    best_val: float | None = None,
    best_step: int | None = None,
    owed_validation: list[float] | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds, in types ``torch.load(weights_only=True)`` accepts.

    No random-generator state: training draws its randomness from ``(seed, task index)``
    (episodes and atom-drop alike), so a checkpoint is the same whichever process wrote it
    and however many processes trained the run.

    ``owed_validation``: the metrics of meta-update ``step`` (training loss, accuracy,
    tasks/s, elapsed s) when its validation was interrupted; resuming runs it first.
    ``data`` is stored as :meth:`~metaacdc.data.facts.DataFacts.to_dict`'s plain mapping.
    """
    payload: dict[str, Any] = {
        "config": config.to_dict(),
        "data": data.to_dict(),
        "step": step,
        "model": learner.state_dict(),
        "best_val": best_val,
        "best_step": best_step,
        "owed_validation": owed_validation,
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    return payload


def save_learner(path: Path, **payload: Any) -> None:
    """Atomic :func:`~metaacdc.runs.checkpoint.save_checkpoint` of :func:`checkpoint_payload`."""
    save_checkpoint(path, checkpoint_payload(**payload))


def read_checkpoint(run_or_file: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A run folder's best checkpoint (its last if no best exists yet), or a checkpoint file."""
    path = Path(run_or_file)
    if path.is_dir():
        folder = RunFolder(path)
        path = folder.best if folder.best.is_file() else folder.last
        if not path.is_file():
            raise FileNotFoundError(
                f"{run_or_file}: no checkpoints/best.pt or last.pt in run folder"
            )
    return load_checkpoint(path, map_location)
