"""Evaluating a run folder: tasks from its test split (or a frozen manifest), the
evaluator, and the CSV written under ``RUN_DIR/eval/``. Shared by ``metaacdc evaluate`` and
``metaacdc curve``. In a ``torch.distributed`` job every process calls it, the tasks are
shared out (see :func:`metaacdc.evaluation.evaluator.evaluate`) and rank 0 writes the CSV."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from metaacdc.config import TrainConfig
from metaacdc.data import CachedSplit, EpisodeSampler, ManifestSampler, load_manifest
from metaacdc.errors import ConfigError
from metaacdc.evaluation.evaluator import EvalResult, evaluate
from metaacdc.evaluation.journal import TaskJournal, weights_fingerprint
from metaacdc.maml.adaptation import Learner
from metaacdc.runs.experiment import evaluation_sampler, evaluation_transform
from metaacdc.runs.folder import RunFolder
from metaacdc.runs.loading import load
from metaacdc.runs.lock import claim, evaluation_lock
from metaacdc.runtime import distributed
from metaacdc.runtime.device import resolve_device


@dataclass(frozen=True)
class RunEvaluation:
    """What :func:`evaluate_run` measured and where it wrote it."""

    config: TrainConfig
    result: EvalResult
    csv: Path
    ways: int
    shots: int
    tasks: int


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
    """Evaluate run folder ``run`` on ``tasks`` tasks (default 3000, or a whole manifest)
    and write the per-task CSV to ``RUN_DIR/eval/<split>-<seed or manifest>-<n>tasks-<k>steps
    .csv``; the run's own normalisation and test-time transform are used. Finished tasks
    are journalled next to it (``<csv>.partial.<rank>``) until it is written, so the same
    call after an interruption evaluates only the missing tasks. Another process
    evaluating the same tasks meanwhile is refused (``RunBusyError``, see
    :mod:`metaacdc.runs.lock`). ``processes`` > 1 shares the tasks out to worker processes
    on this machine (CPU; see :mod:`metaacdc.evaluation.pool`); ``engine`` is the
    evaluator's (:func:`metaacdc.evaluation.evaluate`)."""
    if not Path(run).is_dir():
        raise FileNotFoundError(f"{run}: run folder not found")
    world = distributed.current()
    learner = load(run, device=world.device_for(resolve_device(device)))
    config = learner.config
    with distributed.main_first(world):  # rank 0 prepares a raw source, the others wait
        cached = _open_split(learner, data, split, quiet=not world.is_main)
    transform = evaluation_transform(config)
    mean, std = learner.data.mean, learner.data.std  # the run's, as the API uses
    sampler: EpisodeSampler | ManifestSampler
    if episodes is not None:
        manifest = load_manifest(episodes)
        ways, shots = int(manifest.header["ways"]), int(manifest.header["shots"])
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
        tasks = 3000 if tasks is None else tasks
        sampler = evaluation_sampler(config, cached, learner.data, seed)
    steps = config.test_inner_steps if inner_steps is None else inner_steps
    tag = evaluation_tag(episodes, seed)
    csv = RunFolder(run).evaluations / f"{split}-{tag}-{tasks}tasks-{steps}steps.csv"
    with claim(evaluation_lock(csv), f"evaluation {csv}", hold=world.is_main):
        journal = TaskJournal(
            csv.with_name(csv.name + ".partial"), weights_fingerprint(learner.meta), world.rank
        )
        if world.is_main and (kept := len(journal.finished())):
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
            result.to_csv(csv)
            journal.remove()
    distributed.barrier(world)  # the CSV exists when this returns on any process
    return RunEvaluation(config, result, csv, ways, shots, tasks)


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


def evaluation_tag(episodes: Path | None, seed: int = 0) -> str:
    """What an evaluation CSV's name says its tasks are: the frozen manifest's stem, or
    ``seed<N>`` for the seeded sampler."""
    if episodes is None:
        return f"seed{seed}"
    name = episodes.name
    for suffix in (".gz", ".json"):
        name = name.removesuffix(suffix)
    return name
