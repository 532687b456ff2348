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
import hashlib
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
from metaacdc.errors import ConfigError
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
        """``config.yaml``: the run's resolved settings; its checkpoints record its hash
        (:func:`config_sha256`), so an edit is caught (:func:`check_config_unedited`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text(config))

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


def config_text(config: TrainConfig) -> str:
    """What ``config.yaml`` holds for ``config``."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def config_sha256(config: TrainConfig) -> str:
    """The hash of ``config.yaml`` as written for ``config``, which checkpoints record."""
    return hashlib.sha256(config_text(config).encode()).hexdigest()


def check_config_unedited(folder: RunFolder, payload: dict[str, Any]) -> None:
    """Refuse a run folder whose ``config.yaml`` was edited after ``payload`` (one of its
    checkpoints) was saved: the settings would silently not be the ones the weights were
    trained with. Checkpoints saved before they recorded the hash are not checked.

    Raises:
        ConfigError: one line naming the file and the settings that differ.
    """
    recorded = payload.get("config_sha256")
    if recorded is None or not folder.config.is_file():
        return
    text = folder.config.read_bytes()
    if hashlib.sha256(text).hexdigest() == recorded:
        return
    try:
        edited = yaml.safe_load(text)
    except yaml.YAMLError:
        edited = None
    saved = payload.get("config", {})
    if isinstance(edited, dict):
        changes = [
            f"{key}: {saved.get(key)!r} -> {edited.get(key)!r}"
            for key in sorted(set(saved) | set(edited))
            if saved.get(key) != edited.get(key)
        ]
        what = "; ".join(changes) or "its layout only"
    else:
        what = "it is no longer a mapping of settings"
    raise ConfigError(
        f"{folder.config} was edited after the run's checkpoints were saved ({what}); a run's "
        "settings cannot change: restore the file, or train the new settings into another --out"
    )


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
    config_hash: str | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds, in types ``torch.load(weights_only=True)`` accepts.

    No random-generator state: training draws its randomness from ``(seed, task index)``
    (episodes and atom-drop alike), so a checkpoint is the same whichever process wrote it
    and however many processes trained the run.

    ``owed_validation``: the metrics of meta-update ``step`` (training loss, accuracy,
    tasks/s, elapsed s) when its validation was interrupted; resuming runs it first.
    ``data`` is stored as :meth:`~metaacdc.data.facts.DataFacts.to_dict`'s plain mapping.
    ``config_hash``: the hash of the run's ``config.yaml`` (default: of the file
    :meth:`RunFolder.write_config` writes for ``config``), which :func:`check_config_unedited`
    compares with the file.
    """
    payload: dict[str, Any] = {
        "config": config.to_dict(),
        "config_sha256": config_hash or config_sha256(config),
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
    """A run folder's best checkpoint (its last if no best exists yet), or a checkpoint file.

    Raises:
        FileNotFoundError: no such file, or a run folder without checkpoints.
        ConfigError: the checkpoint cannot be read. A run folder's damaged ``best.pt`` is
            never replaced by its ``last.pt`` silently: the message says ``best.pt`` is
            damaged and, when ``last.pt`` is readable, names its meta-update and the command
            that scores it.
    """
    path = Path(run_or_file)
    if not path.is_dir():
        return load_checkpoint(path, map_location)
    folder = RunFolder(path)
    if not folder.best.is_file():
        if not folder.last.is_file():
            raise FileNotFoundError(
                f"{run_or_file}: no checkpoints/best.pt or last.pt in run folder"
            )
        return load_checkpoint(folder.last, map_location)
    try:
        return load_checkpoint(folder.best, map_location)
    except ConfigError as damage:
        why = str(damage).removeprefix(f"{folder.best}: ")
        if not folder.last.is_file():
            instead = " and the run has no checkpoints/last.pt; train it again"
        else:
            try:
                step = load_checkpoint(folder.last)["step"]
                instead = (
                    f"; `metaacdc evaluate {folder.last}` scores the last checkpoint "
                    f"(meta-update {step}) instead"
                )
            except ConfigError as also:
                instead = (
                    " and so is checkpoints/last.pt "
                    f"({str(also).removeprefix(f'{folder.last}: ')}); train the run again"
                )
        raise ConfigError(
            f"{run_or_file}: checkpoints/best.pt is damaged ({why}){instead}"
        ) from damage
