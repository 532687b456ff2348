"""Evaluating a run folder: tasks from its test split (or a frozen manifest), the
evaluator, and the CSV written under ``RUN_DIR/eval/``. Shared by ``metaacdc evaluate`` and
``metaacdc curve``. In a ``torch.distributed`` job every process calls it, the tasks are
shared out (see :func:`metaacdc.evaluation.evaluator.evaluate`) and rank 0 writes the CSV.

The CSV and the printed result name the meta-update of the checkpoint scored; a run that is
being trained by another process, or did not reach its configured length, is still scored,
with a note on stderr saying so and which checkpoint it is."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from metaacdc.config import TrainConfig
from metaacdc.data import CachedSplit, EpisodeSampler, ManifestSampler, load_manifest
from metaacdc.errors import ConfigError
from metaacdc.evaluation.evaluator import EvalResult, check_evaluation, evaluate
from metaacdc.evaluation.journal import TaskJournal, journal_key, weights_fingerprint
from metaacdc.maml.adaptation import Learner
from metaacdc.runs.experiment import evaluation_sampler, evaluation_transform
from metaacdc.runs.folder import RunFolder, read_checkpoint
from metaacdc.runs.loading import load
from metaacdc.runs.lock import RunBusyError, claim, evaluation_lock, is_claimed, training_lock
from metaacdc.runtime import distributed
from metaacdc.runtime.device import resolve_device


@dataclass(frozen=True)
class RunEvaluation:
    """What :func:`evaluate_run` measured and where it wrote it.

    Attributes:
        checkpoint: the checkpoint file scored.
        checkpoint_step: its meta-update (``step``), also a column of the CSV.
    """

    config: TrainConfig
    result: EvalResult
    csv: Path
    ways: int
    shots: int
    tasks: int
    checkpoint: Path
    checkpoint_step: int


def evaluate_run(
    run: Path,
    *,
    tasks: int | None = None,
    episodes: Path | None = None,
    inner_steps: int | None = None,
    data: str | None = None,
    split: str = "test",
    seed: int = 0,
    device: str = "auto",
    workers: int = 0,
    processes: int = 1,
    progress: bool = True,
    engine: str = "auto",
) -> RunEvaluation:
    """Evaluate run folder ``run`` (its best checkpoint, else its last) or one checkpoint
    file of a run folder (``RUN_DIR/checkpoints/last.pt``) on ``tasks`` tasks (default 3000,
    or a whole manifest) and write the per-task CSV to ``RUN_DIR/eval/<split>-<seed or
    manifest>-<n>tasks-<k>steps.csv`` (for a checkpoint file other than ``best.pt``, in
    ``RUN_DIR/eval/<its name without .pt>/``), with the checkpoint's meta-update in a
    ``checkpoint_step`` column; the run's own normalisation and test-time transform are
    used. A run being trained by another process, or short of its ``meta_updates``, is
    scored with a note on stderr naming the checkpoint's meta-update. Finished tasks are
    journalled next to the CSV (``<csv>.partial.<rank>``, :mod:`metaacdc.evaluation.journal`)
    until it is written, so the same call after an interruption evaluates only the missing
    tasks. Another process evaluating the same tasks meanwhile is refused
    (``RunBusyError``, see :mod:`metaacdc.runs.lock`). ``processes`` > 1 shares the tasks
    out to worker processes on this machine (CPU; see :mod:`metaacdc.evaluation.pool`);
    ``engine`` is the evaluator's (:func:`metaacdc.evaluation.evaluate`).

    Raises:
        FileNotFoundError: no such run folder or checkpoint, or a run folder without
            checkpoints.
        ConfigError: a checkpoint file outside a run folder's ``checkpoints/``, a damaged
            or incompatible checkpoint (a damaged ``best.pt`` is not replaced by
            ``last.pt``: the message offers it), damaged data, or settings that do not fit
            the run.
    """
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"{run}: run folder or checkpoint not found")
    world = distributed.current()
    folder, checkpoint, learner, step = _load(run, world.device_for(resolve_device(device)))
    config = learner.config
    with distributed.main_first(world):  # rank 0 prepares a raw source, the others wait
        cached = _open_split(learner, data, split, quiet=not world.is_main)
    transform = evaluation_transform(config)
    mean, std = learner.data.mean, learner.data.std  # the run's, as the API uses
    sampler: EpisodeSampler | ManifestSampler
    identity: dict[str, object] = {"seed": seed}
    if episodes is not None:
        manifest = load_manifest(episodes)
        ways, shots = int(manifest.header["ways"]), int(manifest.header["shots"])
        queries = ways * int(manifest.query.shape[2])
        identity = {"manifest": manifest.content_sha256()}
        if ways > learner.ways:
            raise ConfigError(
                f"{episodes}: {ways}-way tasks but the run's head has {learner.ways} "
                f"outputs; use a manifest of at most {learner.ways} ways"
            )
        tasks = len(manifest) if tasks is None else tasks
        if tasks > len(manifest):
            raise ConfigError(
                f"--tasks={tasks} but {episodes} holds {len(manifest)} tasks; "
                f"use --tasks <= {len(manifest)}"
            )
        sampler = ManifestSampler(cached, manifest, transform=transform, mean=mean, std=std)
    else:
        ways, shots = config.ways, config.shots
        queries = ways * config.test_queries
        tasks = 3000 if tasks is None else tasks
        sampler = evaluation_sampler(config, cached, learner.data, seed)
    steps = config.test_inner_steps if inner_steps is None else inner_steps
    assert steps is not None  # a loaded run's config is resolved
    tag = evaluation_tag(episodes, seed)
    results = folder.evaluations
    if run.is_file() and checkpoint.name != folder.best.name:
        results = results / checkpoint.stem  # never taken for the run's result
    csv = results / evaluation_csv_name(split, tag, tasks, steps)
    check_evaluation(  # before any file is written
        learner,
        tasks,
        inner_steps=steps,
        workers=workers,
        world=world,
        processes=processes,
        engine=engine,
    )
    with claim(evaluation_lock(csv), f"evaluation {csv}", hold=world.is_main):
        key = journal_key(
            weights=weights_fingerprint(learner.meta),
            data=[cached.meta.source, cached.meta.split, cached.meta.images_sha256],
            task_shape=[ways, shots, queries],
            tasks=tasks,
            steps=steps,
            **identity,
        )
        journal = TaskJournal(
            csv.with_name(csv.name + ".partial"), key, world.rank, tasks=tasks, queries=queries
        )
        if world.is_main:
            note = training_note(folder, checkpoint, step, config)
            if note is not None:
                print(f"note: {note}", file=sys.stderr)
            if kept := len(journal.finished()):
                print(f"resuming: {kept} of {tasks} tasks already evaluated", file=sys.stderr)
        result = evaluate(
            learner,
            sampler,
            tasks,
            inner_steps=steps,
            progress=progress,
            workers=workers,
            world=world,
            journal=journal,
            processes=processes,
            engine=engine,
        )
        # evaluate() gathered every process's accuracies: all journals are complete
        if world.is_main:
            result.to_csv(csv, checkpoint_step=step)
            journal.remove()
    distributed.barrier(world)  # the CSV exists when this returns on any process
    return RunEvaluation(config, result, csv, ways, shots, tasks, checkpoint, step)


def scored_checkpoint(run: Path) -> tuple[RunFolder, Path]:
    """The run folder of ``run`` and the checkpoint file evaluating it scores: a run
    folder's ``best.pt`` (its ``last.pt`` while there is no best), or ``run`` itself when
    it is a checkpoint file in a run folder's ``checkpoints/``.

    Raises:
        FileNotFoundError: a run folder without checkpoints.
        ConfigError: a file that is not in a run folder's ``checkpoints/``.
    """
    if run.is_dir():
        folder = RunFolder(run)
        if not folder.best.is_file() and not folder.last.is_file():
            read_checkpoint(run)  # raises its error for a folder without checkpoints
        return folder, folder.best if folder.best.is_file() else folder.last
    if run.parent.name != "checkpoints":
        raise ConfigError(
            f"{run}: `metaacdc evaluate` takes a run folder or a checkpoint in one "
            "(RUN_DIR/checkpoints/last.pt); score another file in Python with metaacdc.load "
            "and metaacdc.evaluation.evaluate"
        )
    return RunFolder(run.parent.parent), run


def _load(run: Path, device: torch.device) -> tuple[RunFolder, Path, Learner, int]:
    """The run folder of ``run``, the checkpoint file it scores (:func:`scored_checkpoint`),
    its learner (:func:`metaacdc.load` of ``run``, with its checks) and its meta-update, all
    from one and the same file even while a trainer replaces it (read again if it was)."""
    for _ in range(3):
        folder, checkpoint = scored_checkpoint(run)
        before = _identity(checkpoint)
        learner = load(run, device=device)
        step = checkpoint_step(checkpoint)
        same = scored_checkpoint(run)[1] == checkpoint and _identity(checkpoint) == before
        if step is not None and same:
            return folder, checkpoint, learner, step
    raise RunBusyError(
        f"{run}: its checkpoint was replaced while it was read, three times (a run being "
        "trained fast?); try again"
    )


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when a checkpoint is replaced (atomic renames make a new inode)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def checkpoint_step(path: Path) -> int | None:
    """The meta-update a checkpoint was saved at, read without loading its tensors (memory
    mapped) where the file allows; ``None`` when it cannot be read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises several types; try the plain way before giving up
        try:
            payload = read_checkpoint(path)
        except (ConfigError, OSError):
            return None
    step = payload.get("step") if isinstance(payload, dict) else None
    return step if isinstance(step, int) else None


def training_note(
    folder: RunFolder, checkpoint: Path, step: int, config: TrainConfig
) -> str | None:
    """What to tell a user who scores ``checkpoint`` (meta-update ``step``) of ``folder``
    while another process trains the run, or before it reached ``config.meta_updates``;
    ``None`` for a finished run that nobody is training."""
    total = config.meta_updates
    name = f"checkpoints/{checkpoint.name}"
    has_last = folder.last.is_file()
    trained = checkpoint_step(folder.last) if has_last else step
    if is_claimed(training_lock(folder.root)):
        so_far = f", at meta-update {trained} of {total} so far" if trained is not None else ""
        return (
            f"{folder.root} is being trained by another process{so_far}: scoring {name} of "
            f"meta-update {step}, which may not be the run's final result"
        )
    if trained is None or total is None or trained >= total:
        return None
    resume = f"; `metaacdc train --resume --out {folder.root}` continues it" if has_last else ""
    return (
        f"{folder.root} is unfinished (trained to meta-update {trained} of {total}{resume}): "
        f"scoring {name} of meta-update {step}"
    )


def _open_split(learner: Learner, data: str | None, name: str, quiet: bool) -> CachedSplit:
    """The split to evaluate on: ``--data`` (a cache, or a source prepared on first use) or
    the run's own data; refused when its images do not fit the model. ``quiet``: no note
    about a change of data source (it is printed once, by rank 0)."""
    from metaacdc.data import is_complete, open_split
    from metaacdc.runs.experiment import open_splits

    config = learner.config
    if data is not None and is_complete(Path(data) / name):
        split = open_split(Path(data) / name)
    else:
        if data is not None:
            config = dataclasses.replace(config, data=data)
        split = open_splits(config, (name,))[name]
    if split.channels != learner.channels or split.meta.image_size != learner.image_size:
        raise ConfigError(
            f"the {split.describe()} holds {split.channels}-channel "
            f"{split.meta.image_size}px images but the run takes {learner.channels}-channel "
            f"{learner.image_size}px images; give --data of the run's kind and size"
        )
    if split.meta.source != learner.data.source and not quiet:
        print(
            f"note: evaluating a run trained on {learner.data.source} data on {split.describe()}",
            file=sys.stderr,
        )
    return split


def evaluation_csv_name(split: str, tag: str, tasks: int, steps: int) -> str:
    """The file name of an evaluation's per-task CSV: what it measured (split, tasks as
    :func:`evaluation_tag` names them, how many, inner steps), so evaluations of one
    checkpoint that differ in any of these sit side by side."""
    return f"{split}-{tag}-{tasks}tasks-{steps}steps.csv"


def evaluation_tag(episodes: Path | None, seed: int = 0) -> str:
    """What an evaluation CSV's name says its tasks are: the frozen manifest's stem, or
    ``seed<N>`` for the seeded sampler."""
    if episodes is None:
        return f"seed{seed}"
    name = episodes.name
    for suffix in (".gz", ".json"):
        name = name.removesuffix(suffix)
    return name
