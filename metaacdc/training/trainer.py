"""The training loop: episodes in background workers, meta-updates, validation, checkpoints,
and resumption that continues a killed run to the same result as an uninterrupted one.

Under ``torchrun`` every process runs this loop on its share of each meta-batch (see
:mod:`metaacdc.runtime.distributed`); rank 0 alone writes the run folder. Nothing in a checkpoint
depends on the number of processes, so a run can be resumed with another number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from metaacdc.config import TrainConfig, chosen_init, resolve
from metaacdc.data import DataFacts, Episode, EpisodeSampler, episode_loader
from metaacdc.data.loader import ShardedSampler
from metaacdc.data.sampler import task_seed
from metaacdc.errors import ConfigError, NonFiniteError, check_positive_int
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.engine import choose_engine
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.checkpoint import load_checkpoint
from metaacdc.runs.experiment import (
    build_model,
    data_record,
    evaluation_sampler,
    open_splits,
    training_transform,
)
from metaacdc.runs.folder import (
    RunFolder,
    check_config_unedited,
    config_sha256,
    save_learner,
)
from metaacdc.runs.lock import claim, training_lock
from metaacdc.runtime import distributed
from metaacdc.runtime.cuda_graphs import wants_graphs
from metaacdc.runtime.device import describe_device, resolve_device
from metaacdc.runtime.finite import all_finite
from metaacdc.training.graphed_step import GraphedTrainStep, adam, match_capturable
from metaacdc.training.state import TrainState
from metaacdc.training.step import StepStats, batched_train_step, meta_train_step

#: Validation tasks are drawn with this seed in every run, so runs are compared on one list.
VALIDATION_SEED = 0
#: Settings that may differ when a run is resumed (they do not change its result on CPU).
RUNTIME_SETTINGS = ("device", "workers", "cuda_graphs")
#: What a setting added since was in runs saved before it existed.
_SAVED_BEFORE = {"engine": "learn2learn", "init": "closerlook"}
#: Settings whose ``auto`` means "the saved run's" when a run is resumed.
_KEPT_ON_RESUME = ("engine", "init")
#: Validation accuracies closer than this are equal: the same number of correct queries can
#: average to means that differ in the last bit, and the first of equal ones stays the best.
SAME_ACCURACY = 1e-9
#: Columns of a run's metrics.csv: one row per validation.
METRICS = ("step", "loss", "accuracy", "val_accuracy", "val_ci95", "tasks_per_s", "elapsed_s")


class TrainingDivergedError(RuntimeError):
    """The meta-loss (or the weights) became NaN or infinite; nothing of it is saved, and
    the last finite checkpoint, if any, is kept."""

    def __init__(self, step: int, what: str, kept: int | None) -> None:
        saved = (
            "no checkpoint was saved before it"
            if kept is None
            else f"the last finite checkpoint (meta-update {kept}) is kept"
        )
        super().__init__(
            f"{what} at meta-update {step}; stopped, {saved} (try a lower --inner-lr or --meta-lr)"
        )
        self.step = step


@dataclass(frozen=True)
class RunSummary:
    """Where a run stands after :func:`train` returns."""

    run_dir: Path
    step: int
    meta_updates: int
    best_val: float | None
    best_step: int | None

    @property
    def finished(self) -> bool:
        return self.step >= self.meta_updates


def _check_same_run(saved: dict, config: TrainConfig, where: Path) -> None:
    current = config.to_dict()
    saved = {**_SAVED_BEFORE, **saved}
    different = [
        f"{key}: {saved.get(key)!r} -> {current[key]!r}"
        for key in current
        if key not in RUNTIME_SETTINGS and saved.get(key) != current[key]
    ]
    if different:
        raise ConfigError(
            f"{where} was trained with other settings ({'; '.join(different)}); resume without "
            "those settings (the run folder holds its own) or choose another --out"
        )


def settings_for_resume(
    folder: RunFolder, payload: dict[str, Any], config: TrainConfig
) -> TrainConfig:
    """``config`` as it continues the run saved in ``payload`` (a checkpoint of ``folder``):
    ``auto`` engine and initialisation become the saved ones.

    Raises:
        ConfigError: ``folder``'s ``config.yaml`` was edited after the checkpoint, or the
            run was trained with other settings than ``config`` (one line naming them), so
            a run never silently stands for settings it was not trained with.
    """
    check_config_unedited(folder, payload)
    saved = {**_SAVED_BEFORE, **payload["config"]}
    kept = {name: saved[name] for name in _KEPT_ON_RESUME if getattr(config, name) == "auto"}
    config = dataclasses.replace(config, **kept)
    _check_same_run(payload["config"], config, folder.root)
    return config


def saved_settings(out: str | Path) -> TrainConfig:
    """The settings of the run in ``out``, as its last checkpoint records them: what
    ``metaacdc train --out RUN --resume`` continues without repeating a flag
    (``train(saved_settings(out), out, resume=True)``).

    Raises:
        ConfigError: ``out`` holds no checkpoint to resume, or its ``config.yaml`` was
            edited after the checkpoint was saved.
    """
    folder = RunFolder(Path(out))
    if not folder.last.is_file():
        raise ConfigError(f"{folder.root}: nothing to resume (no checkpoints/last.pt)")
    payload = load_checkpoint(folder.last)
    check_config_unedited(folder, payload)
    return TrainConfig.from_dict({**_SAVED_BEFORE, **payload["config"]}, source=str(folder.last))


def _meta_batches(episodes: Iterator[Episode], size: int) -> Iterator[list[Episode]]:
    batch: list[Episode] = []
    for episode in episodes:
        batch.append(episode)
        if len(batch) == size:
            yield batch
            batch = []


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    checkpoint_every_s: float | None = 600.0,
) -> RunSummary:
    """Meta-train ``config`` into run folder ``out`` (see :mod:`metaacdc.runs.folder`).

    In a ``torch.distributed`` job (a process group is initialised, as ``metaacdc train``
    does under ``torchrun``) every process must call it: the tasks of each meta-batch and
    of each validation are shared out, and only rank 0 writes to ``out`` and shows progress.

    The model's own randomness (atom-drop) during a task is seeded from ``(seed, task
    index)`` (:func:`metaacdc.data.sampler.task_seed`), like the task itself, and task
    gradients are added in meta-batch order (:class:`metaacdc.runtime.distributed.TaskGradients`),
    so the result does not depend on the number of processes: on CPU it is bit-identical
    when every process has the same number of threads.

    Args:
        config: the run's settings (protocol defaults are filled in by ``resolve``).
        out: run folder; refused if it already holds a run, unless ``resume``.
        resume: continue the run in ``out`` from its last checkpoint.
        stop_after: do at most this many meta-updates in this call (a session's share of
            a long run); the run can be resumed later.
        progress: show a progress bar.
        checkpoint_every_s: also save the last checkpoint when this much wall time has
            passed since the previous save, so a hard kill (SIGKILL, a machine going away)
            loses at most that much work; ``None``: only at validations and on Ctrl-C.

    Raises:
        TrainingDivergedError: the loss became NaN/inf.
        KeyboardInterrupt: after saving a checkpoint of the last completed meta-update.
        ConfigError: more processes than tasks in a meta-batch, among others.
        RunBusyError: another process is training ``out`` (see :mod:`metaacdc.runs.lock`).
    """
    config = resolve(config)
    if stop_after is not None:
        check_positive_int("stop_after", stop_after)
    world = distributed.current()
    if config.meta_batch < world.size:
        raise ConfigError(
            f"meta_batch={config.meta_batch} tasks cannot be shared by {world.size} "
            f"processes (the tasks of a meta-batch are what is split); use at most "
            f"{config.meta_batch} processes or a larger --meta-batch"
        )
    folder = RunFolder(Path(out))
    if folder.root.exists() and not folder.root.is_dir():
        raise ConfigError(f"{folder.root} is a file, not a run folder; choose another --out")
    if resume and not folder.last.is_file():
        raise ConfigError(f"{folder.root}: nothing to resume (no checkpoints/last.pt)")
    if not resume and folder.last.is_file():
        raise ConfigError(
            f"{folder.root} already holds a run; pass --resume to continue it or choose "
            "another --out"
        )
    lock = training_lock(folder.root)
    held = set(folder.root.iterdir()) if folder.root.is_dir() else set()
    made = [path for path in (folder.root, *folder.root.parents) if not path.exists()]
    try:
        with claim(lock, f"training {folder.root}", hold=world.is_main):
            return _train_claimed(
                config, folder, world, resume, stop_after, progress, checkpoint_every_s
            )
    except BaseException:
        if world.is_main:
            _forget_claim(folder.root, lock, held, made)
        raise


def _forget_claim(root: Path, lock: Path, held: set[Path], made: list[Path]) -> None:
    """After a refusal or a failure, leave the disk as it was when nothing but the claim
    was written: the lock file goes, and the folders made for it (``made``, the run folder
    first, then its parents)."""
    now = set(root.iterdir()) if root.is_dir() else set()
    if now - held != {lock}:
        return  # the run wrote something (a diverged or interrupted run): keep it all
    lock.unlink(missing_ok=True)
    for folder in made:
        with contextlib.suppress(OSError):  # not empty after all: someone else writes there
            folder.rmdir()


def _train_claimed(
    config: TrainConfig,
    folder: RunFolder,
    world: distributed.World,
    resume: bool,
    stop_after: int | None,
    progress: bool,
    checkpoint_every_s: float | None,
) -> RunSummary:
    """The body of :func:`train`, once this process (rank 0) holds the run's claim."""
    payload = None
    if folder.last.is_file():
        if not resume:
            raise ConfigError(
                f"{folder.root} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        payload = load_checkpoint(folder.last)
        config = settings_for_resume(folder, payload, config)
    session = _Session(config, folder, world, payload)
    session.start_folder()
    remaining = session.remaining(stop_after)
    session.log(
        f"{'resuming at' if payload else 'starting'} meta-update {session.state.step} of "
        f"{config.meta_updates} on {describe_device(session.device)}"
    )
    if remaining > 0 or session.state.owed is not None:
        session.run(remaining, progress, checkpoint_every_s)
    return session.summary()


class _Session:
    """One call's training of a run: the model, optimizer, samplers and :class:`TrainState`
    it shares between meta-updates, validations and checkpoints."""

    def __init__(
        self,
        config: TrainConfig,
        folder: RunFolder,
        world: distributed.World,
        payload: dict[str, Any] | None,
    ) -> None:
        assert config.meta_updates is not None and config.test_inner_steps is not None
        self.device = world.device_for(resolve_device(config.device))
        # the run folder records the engine auto chose, which a resumed run keeps
        config = dataclasses.replace(
            config, engine=choose_engine(config.engine, self.device), init=chosen_init(config.init)
        )
        self.config, self.folder, self.world = config, folder, world
        torch.manual_seed(config.seed)
        with distributed.main_first(world):  # rank 0 prepares a raw source, the others wait
            splits = open_splits(config, ("train", "val"))
        self.data = DataFacts.from_split(splits["train"])
        model = build_model(config, splits["train"].channels)
        self.learner = MetaLearner(
            model, config.inner_lr, bool(config.first_order), config.adapt, config.meta_sgd
        ).to(self.device)
        graphs = wants_graphs(config.cuda_graphs, self.device, engine=config.engine)
        self.optimizer = adam(self.learner.parameters(), config.meta_lr, capturable=graphs)
        self.batched = (
            BatchedMAML(self.learner, cuda_graphs=graphs) if config.engine == "batched" else None
        )
        self.state = TrainState()
        if payload is not None:
            self.learner.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            match_capturable(self.optimizer)
            self.state = TrainState.from_checkpoint(payload)
        self.saved_step = None if payload is None else self.state.step
        self.config_hash = _config_hash(folder, config, payload)
        self.payload = payload
        self.train_sampler = EpisodeSampler(
            splits["train"],
            config.ways,
            config.shots,
            config.queries,
            config.seed,
            transform=training_transform(config),
        )
        self.val_sampler = evaluation_sampler(config, splits["val"], self.data, VALIDATION_SEED)
        self.mine = world.shard(config.meta_batch)  # this process's tasks of every meta-batch
        self.log = _Log(folder.log if world.is_main else None)
        self.graphed = self._graphed_step(graphs)
        # one evaluation learner for the session: its captured adaptations are reused
        self.validator = Learner(self.learner, config, self.data, self.device)
        self.started = self.saved_at = time.perf_counter()

    def _graphed_step(self, graphs: bool) -> GraphedTrainStep | None:
        """The captured meta-update where ``graphs`` and one process trains."""
        if not graphs:
            return None
        assert self.batched is not None
        if self.world.distributed:
            self.log(
                f"CUDA graphs off for training: {self.world.size} processes share each "
                "meta-batch (their gradients meet between the backward and the step)"
            )
            return None
        return GraphedTrainStep(
            self.batched, self.optimizer, self.config.inner_steps, amp=self.config.amp
        )

    def start_folder(self) -> None:
        """Write the run folder's records (rank 0), once everything is known to work: a new
        run's ``config.yaml`` and ``metrics.csv``; a resumed run's metrics without the rows
        written after its checkpoint; ``data.json`` either way."""
        folder, config = self.folder, self.config
        if not self.world.is_main:
            return
        if self.payload is None or not folder.config.is_file():
            folder.write_config(config)
            self.config_hash = config_sha256(config)
        if self.payload is None or not folder.metrics.is_file():
            folder.start_metrics(METRICS)  # deleted since: the rows to come are kept
        else:  # rows written after the checkpoint are written again
            owed = self.state.owed is not None
            folder.drop_metrics_from(self.state.step if owed else self.state.step + 1)
        folder.write_data(data_record(config))  # the cache it trains on, with checksums

    def remaining(self, stop_after: int | None) -> int:
        """Meta-updates this call does: to the end of the run, at most ``stop_after``."""
        assert self.config.meta_updates is not None
        remaining = self.config.meta_updates - self.state.step
        return remaining if stop_after is None else min(remaining, stop_after)

    def summary(self) -> RunSummary:
        assert self.config.meta_updates is not None
        state = self.state
        return RunSummary(
            self.folder.root, state.step, self.config.meta_updates, state.best_val, state.best_step
        )

    def save(self, path: Path, owed_validation: list[float] | None = None) -> None:
        """A checkpoint of the current state at ``path`` (rank 0 only).

        Raises:
            TrainingDivergedError: a weight is not finite (the checkpoint is not written).
        """
        if not self.world.is_main:
            return
        self.require_finite_weights()
        save_learner(
            path,
            config=self.config,
            data=self.data,
            step=self.state.step,
            learner=self.learner,
            optimizer=self.optimizer,
            best_val=self.state.best_val,
            best_step=self.state.best_step,
            owed_validation=owed_validation,
            config_hash=self.config_hash,
        )
        self.saved_at = time.perf_counter()
        if path == self.folder.last:
            self.saved_step = self.state.step

    def require_finite_weights(self) -> None:
        """Stop before validating or saving weights that are not all finite (a finite loss
        does not guarantee them: the update after it can overflow).

        Raises:
            TrainingDivergedError: naming the first non-finite weight.
        """
        weights = self.learner.state_dict()
        if not all_finite(weights.values()):  # one host sync; names only on the way out
            name = next(key for key, values in weights.items() if not all_finite([values]))
            raise TrainingDivergedError(
                self.state.step, f"weight {name} is not finite", self.saved_step
            )

    def validate(self, metrics: list[float]) -> None:
        """Validate the current meta-update (``metrics``: its training loss, accuracy,
        tasks/s and elapsed s), log it, and save the best and last checkpoints.

        Raises:
            TrainingDivergedError: a weight is not finite, or a validation task's adaptation
                diverged (nothing is saved).
        """
        self.require_finite_weights()
        state = self.state
        state.owed = metrics  # until its row is written: a Ctrl-C now leaves it owed
        try:
            result = evaluate(
                self.validator,  # evaluation's path
                self.val_sampler,
                self.config.val_tasks,
                inner_steps=self.config.test_inner_steps,
                progress=False,
                engine=self.config.engine,
            )
        except NonFiniteError as error:  # the weights are finite: their adaptation is not
            raise TrainingDivergedError(
                state.step, f"validation failed ({error})", self.saved_step
            ) from error
        improved = state.best_val is None or result.mean > state.best_val + SAME_ACCURACY
        if improved:
            state.best_val, state.best_step = result.mean, state.step
            self.save(self.folder.best)
        loss, accuracy, rate, elapsed = metrics
        if self.world.is_main:
            row = (state.step, loss, accuracy, result.mean, result.ci95, rate, elapsed)
            self.folder.append_metrics(row)
        self.log(
            f"meta-update {state.step}: loss {loss:.4f} train acc {accuracy:.3f} "
            f"val acc {result.mean:.4f} ± {result.ci95:.4f}{' (best)' if improved else ''}"
        )
        state.owed = None
        self.save(self.folder.last)

    def episodes(self, first_update: int, updates: int) -> Iterator[Episode]:
        """This process's episodes of meta-updates ``first_update`` onwards, ``updates`` of
        them (no loader started for none)."""
        if updates > 0:
            yield from episode_loader(
                ShardedSampler(self.train_sampler, self.config.meta_batch, self.mine),
                updates * len(self.mine),
                start=first_update * len(self.mine),
                num_workers=self.config.workers,
            )

    def run(self, remaining: int, progress: bool, checkpoint_every_s: float | None) -> None:
        """An owed validation, then ``remaining`` meta-updates with their validations and
        checkpoints; on Ctrl-C the last completed meta-update is saved."""
        config, state = self.config, self.state
        bar = tqdm(
            total=config.meta_updates,
            initial=state.step,
            disable=not (progress and self.world.is_main),
            unit="update",
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,  # logs get a line every 30 s
        )
        self.learner.train()
        try:
            if state.owed is not None:  # the last session was interrupted while validating
                self.validate(state.owed)
            episodes = self.episodes(state.step, remaining)
            for done, tasks in enumerate(_meta_batches(episodes, len(self.mine)), start=1):
                stats = self.meta_update(tasks)
                rate = done * config.meta_batch / (time.perf_counter() - self.started)
                bar.update(1)
                bar.set_postfix(
                    refresh=False,
                    loss=f"{stats.loss:.3f}",
                    acc=f"{stats.accuracy:.3f}",
                    tasks_s=f"{rate:.2f}",
                    best=state.best_val,
                )
                # validations at fixed steps only, so a run split by stop_after or an
                # interruption keeps the validations (and best checkpoint) of an unsplit run
                if state.step % config.val_every == 0 or state.step == config.meta_updates:
                    elapsed = time.perf_counter() - self.started
                    self.validate([stats.loss, stats.accuracy, rate, elapsed])
                elif done == remaining or (
                    checkpoint_every_s is not None
                    and time.perf_counter() - self.saved_at >= checkpoint_every_s
                ):
                    self.save(self.folder.last)
        except KeyboardInterrupt:
            # the interrupted meta-update is discarded: save the state before it began (or
            # after it, with its validation owed, when that was what got interrupted)
            self.save(self.folder.last, state.owed)
            self.log(f"interrupted; saved meta-update {state.step} to {self.folder.last}")
            raise
        finally:
            bar.close()
        distributed.barrier(self.world)  # the run folder is complete when train() returns

    def meta_update(self, tasks: list[Episode]) -> StepStats:
        """One meta-update on this process's ``tasks``; the step count moves on.

        Raises:
            TrainingDivergedError: the meta-loss is not finite (nothing is saved of it).
        """
        config, step = self.config, self.state.step
        seeds = [task_seed(config.seed, step * config.meta_batch + i) for i in self.mine]
        stats = self._graphed_update(tasks, seeds) if self.graphed is not None else None
        if stats is None:
            stats = self._eager_update(tasks, seeds)
        if not math.isfinite(stats.loss):
            raise TrainingDivergedError(step + 1, f"meta-loss is {stats.loss}", self.saved_step)
        self.state.step += 1
        return stats

    def _eager_update(self, tasks: list[Episode], seeds: list[int]) -> StepStats:
        """A meta-update launched from Python, by the run's engine."""
        config = self.config
        if self.batched is not None:
            return batched_train_step(
                self.batched,
                tasks,
                self.optimizer,
                config.inner_steps,
                amp=config.amp,
                task_seeds=seeds,
                world=self.world,
            )
        return meta_train_step(
            self.learner,
            tasks,
            self.optimizer,
            config.inner_steps,
            self.device,
            config.amp,
            task_seeds=seeds,
            world=self.world,
        )

    def _graphed_update(self, tasks: list[Episode], seeds: list[int]) -> StepStats | None:
        """A captured meta-update; None where CUDA refused the capture, which makes this
        run eager from now on, with one line in the log saying why (the state is as
        before the attempt)."""
        assert self.graphed is not None
        try:
            return self.graphed(tasks, seeds)
        except RuntimeError as error:
            if self.graphed.captured:
                raise  # a replay failed: not a capture problem
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            self.log(f"CUDA graphs off for training, eager steps instead: {reason}")
            self.graphed = None
        return None


def _config_hash(folder: RunFolder, config: TrainConfig, payload: dict[str, Any] | None) -> str:
    """The hash of the run's ``config.yaml`` that its checkpoints record: a new run's as
    it is written now; a resumed run's as recorded (or, for a run saved before checkpoints
    recorded it, of the file as it is)."""
    if payload is not None and payload.get("config_sha256"):
        return str(payload["config_sha256"])
    if payload is not None and folder.config.is_file():
        return hashlib.sha256(folder.config.read_bytes()).hexdigest()
    return config_sha256(config)


class _Log:
    """Appends time-stamped lines to the run's log.txt (nothing without a path: the
    processes other than rank 0 write no files)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        with self.path.open("a") as stream:
            stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


__all__ = ["METRICS", "RunSummary", "TrainingDivergedError", "saved_settings", "train"]
