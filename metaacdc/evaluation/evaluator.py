"""The evaluator: accuracy over many test tasks, mean ± 95% confidence interval (design §5).

Each task is adapted by :meth:`metaacdc.maml.adaptation.Learner.adapt` (the adaptation API's
own code path: first-order, on a copy detached from the model) and its queries classified
without autograd; with the batched engine, many tasks at once by
:meth:`~metaacdc.maml.adaptation.Learner.predict_tasks`, the same numbers up to float
rounding. Tasks are independent: a fresh copy per task, and batch-norm statistics come from
the task's own support or query batch (no running statistics), so the result does not
depend on task order, nor on which process evaluates it: under ``torch.distributed`` the
tasks are shared out and their accuracies gathered back in task order, so the result is the
one a single process gives; on a CPU, ``processes`` shares them out to worker processes of
this machine instead (:mod:`metaacdc.evaluation.pool`, faster than one process's threads).

Accuracies are fractions in ``[0, 1]`` everywhere in this module (``EvalResult`` fields,
CSV columns); tables printed by the CLI show them in percent.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from metaacdc.data.loader import IndexedSampler, ShardedSampler, episode_loader
from metaacdc.data.sampler import Episode
from metaacdc.errors import ConfigError, check_positive_int
from metaacdc.evaluation.journal import TaskJournal
from metaacdc.evaluation.pool import EvaluationPool
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.engine import check_engine_supports, choose_engine
from metaacdc.maml.modes import evaluation_mode
from metaacdc.maml.task_batch import stack_tasks, task_shapes
from metaacdc.runtime import distributed
from metaacdc.runtime.distributed import World
from metaacdc.runtime.memory import reuse_freed_memory


@dataclass(frozen=True)
class EvalResult:
    """Per-task accuracies and their summary.

    Attributes:
        accuracies: ``(T,)`` float64 query accuracy of each task, a fraction in ``[0, 1]``.
        mean: mean of ``accuracies``.
        ci95: half-width of the 95% confidence interval, ``1.96 * std / sqrt(T)`` with the
            population std (``np.std``, as CloserLook's ``test.py``).
    """

    accuracies: np.ndarray
    mean: float
    ci95: float

    @classmethod
    def from_accuracies(cls, accuracies: Iterable[float]) -> EvalResult:
        """Summarise per-task accuracies (fractions)."""
        values = np.asarray(list(accuracies), dtype=np.float64)
        if values.size == 0:
            raise ValueError("no task accuracies to summarise")
        return cls(values, float(values.mean()), confidence_95(values))

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}% over {len(self.accuracies)} tasks"

    def to_csv(self, path: str | Path, *, checkpoint_step: int | None = None) -> Path:
        """Write one row per task (``task``, ``accuracy``), then summary rows whose
        ``task`` is ``mean`` and ``ci95``. ``pandas.read_csv(path)`` reads it back; the
        per-task rows are those whose ``task`` is a number.

        Args:
            path: the CSV file.
            checkpoint_step: the meta-update of the checkpoint evaluated; when given, every
                row holds it in a third column, ``checkpoint_step``.

        Returns:
            The path written (parent folders are created).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = pd.DataFrame(
            {"task": [str(i) for i in range(len(self.accuracies))], "accuracy": self.accuracies}
        )
        summary = pd.DataFrame({"task": ["mean", "ci95"], "accuracy": [self.mean, self.ci95]})
        table = pd.concat([rows, summary])
        if checkpoint_step is not None:
            table["checkpoint_step"] = checkpoint_step
        table.to_csv(path, index=False, float_format="%.10g")
        return path


def confidence_95(accuracies: np.ndarray) -> float:
    """``1.96 * np.std(accuracies) / sqrt(len(accuracies))`` (population std)."""
    return float(1.96 * np.std(accuracies) / np.sqrt(len(accuracies)))


def task_accuracy(learner: Learner, episode: Episode, inner_steps: int | None = None) -> float:
    """Query accuracy (fraction) of ``learner`` adapted to one episode's support set."""
    support_x, support_y, query_x, query_y = (t.to(learner.device) for t in episode[:4])
    model = learner.adapt(support_x, support_y, steps=inner_steps)
    with torch.inference_mode():
        predicted = model(query_x).argmax(1)
        return (predicted == query_y).double().mean().item()


def evaluate(
    learner: Learner,
    sampler: IndexedSampler,
    tasks: int,
    *,
    inner_steps: int | None = None,
    progress: bool = True,
    workers: int = 0,
    world: World | None = None,
    journal: TaskJournal | None = None,
    processes: int = 1,
    engine: str = "auto",
) -> EvalResult:
    """Mean query accuracy of ``learner`` over episodes ``0 .. tasks-1`` of ``sampler``.

    In a ``torch.distributed`` job every process must call it: process ``r`` of ``n``
    evaluates tasks ``r, r + n, ...`` and every process returns the result over all tasks.

    Args:
        learner: from :func:`metaacdc.load`.
        sampler: anything with ``episode(i)``: an ``EpisodeSampler`` (built with the run's
            evaluation transform) or a ``ManifestSampler``.
        tasks: number of tasks (3,000 in the protocol).
        inner_steps: adaptation steps; default the run's ``test_inner_steps``.
        progress: show a progress bar with the running mean.
        workers: background processes preparing episodes (0: in this process).
        world: the processes sharing the tasks (default
            :func:`metaacdc.runtime.distributed.current`); only rank 0 shows progress.
        journal: where finished tasks are recorded as they finish; tasks it already holds
            are not evaluated again (an interrupted evaluation resumes).
        processes: worker processes on this machine sharing the tasks (CPU only; see
            :mod:`metaacdc.evaluation.pool`): each draws its own episodes and runs
            ``torch.get_num_threads() // processes`` threads (at least one). 1 evaluates
            in this process. A script using it needs the ``if __name__ == "__main__":``
            guard (workers are separate processes that import the main module). Not one
            of the CPU fast paths (:mod:`metaacdc.runtime.fast_paths`), whose switch the
            workers follow.
        engine: ``learn2learn`` adapts the tasks one by one (:meth:`Learner.adapt`);
            ``batched`` adapts equally shaped tasks together, as many per call as fit in
            memory (:meth:`Learner.predict_tasks`): the same accuracies up to float
            rounding; ``auto`` picks the faster on the learner's device
            (:func:`metaacdc.maml.engine.choose_engine`).

    Returns:
        The per-task accuracies and their mean ± 95% CI (fractions).

    Raises:
        ConfigError: ``tasks``, ``inner_steps``, ``workers`` or ``processes`` invalid
            (``processes > 1`` on a GPU, in a ``torch.distributed`` job or with
            ``workers`` or the batched engine), an unknown engine, or a task the learner
            cannot take (more ways than its head).
    """
    world = distributed.current() if world is None else world
    engine = check_evaluation(
        learner,
        tasks,
        inner_steps=inner_steps,
        workers=workers,
        world=world,
        processes=processes,
        engine=engine,
    )
    numbers = world.shard(tasks)  # the task numbers of this process's tasks
    mine = len(numbers)
    local = ShardedSampler(sampler, world.size, [world.rank]) if world.distributed else sampler
    finished = journal.finished() if journal is not None else {}
    accuracies = np.array([finished.get(numbers[k], np.nan) for k in range(mine)])
    todo = [k for k in range(mine) if np.isnan(accuracies[k])]
    remaining = _Picked(local, todo)
    episodes: Iterable[Episode]
    if workers > 0 and todo:
        episodes = episode_loader(remaining, len(todo), num_workers=workers)
    else:
        episodes = (remaining.episode(j) for j in range(len(todo)))
    progress = progress and world.is_main
    bar = tqdm(
        total=mine,
        initial=mine - len(todo),
        desc="evaluating",
        unit="task",
        disable=not progress,
        leave=False,
    )
    work = functools.partial(task_accuracy, learner, inner_steps=inner_steps)
    try:
        with bar, reuse_freed_memory(), evaluation_mode(learner.meta), ExitStack() as stack:
            results: Iterable[tuple[int, float]]
            if processes > 1 and todo:
                pool = stack.enter_context(EvaluationPool(work, local, min(processes, len(todo))))
                results = ((todo[j], accuracy) for j, accuracy in pool.results(todo))
            elif engine == "batched":
                results = _batched_accuracies(learner, zip(todo, episodes), inner_steps)
            else:
                results = ((k, work(episode)) for k, episode in zip(todo, episodes))
            for done, (k, accuracy) in enumerate(results, start=mine - len(todo) + 1):
                accuracies[k] = accuracy
                if journal is not None:
                    journal.record(numbers[k], accuracies[k])
                bar.update()
                if progress and (done % 10 == 0 or done == mine):
                    bar.set_postfix_str(f"acc {100 * np.nanmean(accuracies):.2f}%")
    finally:
        if journal is not None:
            journal.close()
    return EvalResult.from_accuracies(distributed.gather_strided(accuracies, tasks, world))


def check_evaluation(
    learner: Learner,
    tasks: int,
    *,
    inner_steps: int | None = None,
    workers: int = 0,
    world: World | None = None,
    processes: int = 1,
    engine: str = "auto",
) -> str:
    """Refuse the settings :func:`evaluate` refuses, before anything runs (so a caller can
    check them before writing anything); returns the engine ``auto`` stands for.

    Raises:
        ConfigError: as :func:`evaluate` says.
    """
    check_positive_int("tasks", tasks)
    if inner_steps is not None:
        check_positive_int("inner_steps", inner_steps, minimum=0)
    check_positive_int("workers", workers, minimum=0)
    world = distributed.current() if world is None else world
    _check_processes(processes, learner, world, workers)
    engine = choose_engine(engine, learner.device)
    check_engine_supports(engine, processes=processes)
    return engine


def _batched_accuracies(
    learner: Learner, numbered: Iterable[tuple[int, Episode]], inner_steps: int | None
) -> Iterator[tuple[int, float]]:
    """``(k, accuracy)`` of each numbered episode, adapted by the batched engine: runs of
    consecutive equally shaped episodes, as many per call as fit in memory (an episode of
    another shape starts a new call; nothing is padded)."""
    pending: list[tuple[int, Episode]] = []
    size = 0
    for k, episode in numbered:
        if pending and (len(pending) == size or task_shapes(episode) != task_shapes(pending[0][1])):
            yield from _accuracies_of(learner, pending, inner_steps)
            pending = []
        if not pending:
            size = learner.tasks_per_batch(episode.support_x, episode.support_y)
        pending.append((k, episode))
    if pending:
        yield from _accuracies_of(learner, pending, inner_steps)


def _accuracies_of(
    learner: Learner, numbered: list[tuple[int, Episode]], inner_steps: int | None
) -> Iterator[tuple[int, float]]:
    """The accuracies of equally shaped episodes, adapted in one batched call."""
    batch = stack_tasks([episode for _, episode in numbered], learner.device)
    assert batch.query_y is not None
    predicted = learner.predict_tasks(
        batch.support_x,
        batch.support_y,
        batch.query_x,
        steps=inner_steps,
        tasks_per_batch=len(numbered),
    )
    assert isinstance(predicted, torch.Tensor)
    hits = (predicted == batch.query_y).double().mean(1).tolist()
    for (k, _), accuracy in zip(numbered, hits):
        yield k, accuracy


def _check_processes(processes: int, learner: Learner, world: World, workers: int) -> None:
    check_positive_int("processes", processes)
    if processes == 1:
        return
    if learner.device.type != "cpu":
        raise ConfigError(
            f"processes={processes} is for CPU evaluation, but the learner is on "
            f"{learner.device}; on GPUs launch one process per GPU with torchrun"
        )
    if world.distributed:
        raise ConfigError(
            f"processes={processes} inside a torch.distributed job of {world.size} processes; "
            "launch more torchrun processes instead"
        )
    if workers > 0:
        raise ConfigError(
            f"workers={workers} with processes={processes}: each evaluation process draws "
            "its own episodes; leave workers at 0"
        )


class _Picked:
    """Episodes ``picks[0], picks[1], ...`` of ``sampler``, as episodes ``0, 1, ...``."""

    def __init__(self, sampler: IndexedSampler, picks: list[int]) -> None:
        self.sampler, self.picks = sampler, picks

    def episode(self, j: int) -> Episode:
        """Episode ``picks[j]`` of the sampler."""
        return self.sampler.episode(self.picks[j])
