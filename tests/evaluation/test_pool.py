"""The evaluator with its tasks shared out to worker processes (``processes > 1``)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from metaacdc.api import Learner
from metaacdc.data import EpisodeSampler
from metaacdc.errors import ConfigError
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.evaluation.journal import TaskJournal, weights_fingerprint
from metaacdc.evaluation.pool import EvaluationPool
from metaacdc.runtime.distributed import World
from metaacdc.runtime.fast_paths import cpu_fast_paths, cpu_fast_paths_enabled
from tests.tiny_runs import synthetic

TASKS = 8  # six taken by the workers, two found in a journal


@pytest.fixture
def one_thread() -> Iterator[None]:
    """This process on one thread, as each of two workers is (equal float rounding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def in_process(learner: Learner, sampler: EpisodeSampler) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate(learner, sampler, TASKS, progress=False).accuracies
    finally:
        torch.set_num_threads(threads)


def test_workers_give_the_accuracies_of_one_process_and_take_only_the_tasks_the_journal_lacks(
    learner: Learner,
    sampler: EpisodeSampler,
    in_process: np.ndarray,
    one_thread: None,
    tmp_path: Path,
) -> None:
    """One pool run checks both: the six tasks the workers take (around the journal's two,
    so that results are placed by task number) are bit-equal to one process's, and the
    journal's tasks are kept, not recomputed."""
    journal = TaskJournal(tmp_path / "test.csv.partial", weights_fingerprint(learner.meta))
    journal.record(1, 0.125)  # a value no task of this size gives: kept, not recomputed
    journal.record(6, float(in_process[6]))
    journal.close()
    result = evaluate(learner, sampler, TASKS, progress=False, journal=journal, processes=2)
    pooled = [k for k in range(TASKS) if k not in (1, 6)]
    np.testing.assert_array_equal(result.accuracies[pooled], in_process[pooled])
    assert (result.accuracies[1], result.accuracies[6]) == (0.125, in_process[6])
    assert sorted(journal.finished()) == list(range(TASKS))
    assert multiprocessing.active_children() == []  # the workers are gone


class _StopAtSecondTask(TaskJournal):
    def record(self, task: int, accuracy: float) -> None:
        if len(self.finished()) == 1:
            raise KeyboardInterrupt
        super().record(task, accuracy)


def test_an_interrupted_evaluation_stops_its_workers_and_keeps_finished_tasks(
    learner: Learner, sampler: EpisodeSampler, tmp_path: Path
) -> None:
    journal = _StopAtSecondTask(tmp_path / "test.csv.partial", weights_fingerprint(learner.meta))
    with pytest.raises(KeyboardInterrupt):
        evaluate(learner, sampler, TASKS, progress=False, journal=journal, processes=2)
    assert multiprocessing.active_children() == []
    assert len(journal.finished()) == 1


def test_an_error_in_a_worker_reaches_the_caller(learner: Learner) -> None:
    wide = EpisodeSampler(synthetic("test"), ways=6, shots=1, queries=2, seed=0)
    with pytest.raises(ConfigError, match="6 classes but this model's head has 5"):
        evaluate(learner, wide, 2, progress=False, processes=2)
    assert multiprocessing.active_children() == []


class _Numbers:
    def episode(self, i: int) -> int:
        return i


def _exit_on_three(number: int) -> float:
    if number == 3:
        os._exit(3)  # a worker killed mid-task (out of memory, kill -9)
    return float(number)


def test_a_worker_that_dies_is_reported() -> None:
    seen = []
    with (
        pytest.raises(RuntimeError, match="ended unexpectedly with exit code 3"),
        EvaluationPool(_exit_on_three, _Numbers(), 1) as pool,  # type: ignore[arg-type]
    ):
        for _, value in pool.results(range(6)):
            seen.append(value)
    # one worker takes the tasks in order; a killed process may not have sent its last ones
    assert seen == [0.0, 1.0, 2.0][: len(seen)]
    assert multiprocessing.active_children() == []


def _fast_paths_enabled(number: int) -> float:
    return float(cpu_fast_paths_enabled())


def test_workers_follow_the_fast_path_switch_of_the_caller() -> None:
    """Spawned workers start fresh; the pool hands them the setting where it is built.
    Both pools are alive at once (their workers start side by side), and each is asked
    after the switch has gone back to its default: what counts is where it was built."""
    with contextlib.ExitStack() as stack:
        pools = {}
        for enabled in (True, False):
            with cpu_fast_paths(enabled):
                pool = EvaluationPool(_fast_paths_enabled, _Numbers(), 1)  # type: ignore[arg-type]
            pools[enabled] = stack.enter_context(pool)
        assert cpu_fast_paths_enabled()  # the default, also while both pools run
        for enabled, pool in pools.items():
            assert {value for _, value in pool.results(range(4))} == {float(enabled)}
    assert multiprocessing.active_children() == []


def test_workers_with_the_fast_paths_off_give_the_accuracies_of_one_process(
    learner: Learner, sampler: EpisodeSampler, one_thread: None
) -> None:
    """The pool is not a fast path: with the fast paths off it still shares the tasks out,
    and gives the plain path's accuracies of one process."""
    with cpu_fast_paths(False):
        alone = evaluate(learner, sampler, 4, progress=False)
        pooled = evaluate(learner, sampler, 4, progress=False, processes=2)
    np.testing.assert_array_equal(pooled.accuracies, alone.accuracies)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"processes": 0}, "processes=0"),
        ({"processes": 2, "workers": 1}, "workers=1 with processes=2"),
        ({"processes": 2, "world": World(rank=0, size=2)}, "inside a torch.distributed job"),
    ],
)
def test_pool_settings_that_cannot_work_are_refused(
    learner: Learner, sampler: EpisodeSampler, kwargs, message
) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate(learner, sampler, 2, progress=False, **kwargs)


def test_workers_are_refused_on_a_gpu(sampler: EpisodeSampler) -> None:
    on_gpu = types.SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="is for CPU evaluation, but the learner is on cuda:0"):
        evaluate(on_gpu, sampler, 2, progress=False, processes=2)  # type: ignore[arg-type]
