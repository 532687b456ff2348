"""Evaluation tasks shared out to worker processes on this machine (CPU evaluation).

On a CPU, several processes of one thread each evaluate MAML tasks faster than one process
using every core: a task's inner loop is a chain of small operations on a handful of
support images, which threads share poorly, and in one process the dispatch of every
operation waits for Python's global lock. On the 2-core development machine, two
processes of one thread evaluated Conv4 84 px 5-way 1-shot tasks 1.27x as fast as one
process of two threads (median of five rounds of ``scripts/bench_maml.py``; docs/speed.md).

Workers are forked by a ``forkserver``: a fresh interpreter, started once per process, that
imports torch, learn2learn and the evaluator once and has run no OpenMP threads (forking a
process whose OpenMP threads have run can hang the child). A worker therefore starts in
milliseconds rather than the seconds a fresh interpreter spends importing (the server
itself starts once, with the first pool). Workers receive a pickled copy of the work and the
sampler (a memory-mapped cache pickles as its path, see
:class:`~metaacdc.data.CachedSplit`), and take task numbers from a shared queue, so a slow
task never holds up the others. Each task
is a pure function of its number: which worker evaluates it changes nothing but float
rounding from the number of threads. As with any ``spawn`` or ``forkserver`` pool, a script
that starts one needs the ``if __name__ == "__main__":`` guard (workers import the main
module).

The pool is not one of the CPU fast paths of :mod:`metaacdc.runtime.fast_paths`: the number
of processes is the caller's explicit choice, and it changes no number beyond the rounding
of each worker's thread count. The workers do follow the switch: a fresh interpreter would
start with the fast paths on, so each worker is handed the setting in force where the pool
is built, and evaluates its tasks under it (the plain path within ``cpu_fast_paths(False)``).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import torch

from metaacdc.data.loader import IndexedSampler
from metaacdc.data.sampler import Episode
from metaacdc.errors import check_positive_int
from metaacdc.runtime.fast_paths import cpu_fast_paths, cpu_fast_paths_enabled
from metaacdc.runtime.memory import reuse_freed_memory

#: seconds between checks that the workers are still alive while waiting for a result
_POLL_S = 1.0
#: what the fork server imports once for every worker it forks (torch, learn2learn and the
#: evaluator's modules come with it)
PRELOAD = ("metaacdc.evaluation.evaluator",)


def default_threads(processes: int) -> int:
    """Intra-op threads per worker: this process's thread count shared out, at least 1."""
    return max(1, torch.get_num_threads() // processes)


class EvaluationPool:
    """``processes`` worker processes computing ``work(sampler.episode(n))`` for task
    numbers ``n``; use it as a context manager (the workers stop on leaving it, also on an
    error or Ctrl-C).

    Args:
        work: a picklable function of one episode (a module-level function or a
            ``functools.partial`` of one), e.g. the evaluator's task accuracy.
        sampler: anything with ``episode(i)``, picklable.
        processes: number of worker processes (>= 1).
        threads: intra-op threads per worker (default :func:`default_threads`).

    The workers run with the CPU fast paths as they are here, when the pool is built
    (:func:`~metaacdc.runtime.fast_paths.cpu_fast_paths_enabled`).
    """

    def __init__(
        self,
        work: Callable[[Episode], float],
        sampler: IndexedSampler,
        processes: int,
        threads: int | None = None,
    ) -> None:
        check_positive_int("processes", processes)
        threads = default_threads(processes) if threads is None else threads
        check_positive_int("threads", threads)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOAD))  # no effect once the server runs
        self._inbox: Any = context.Queue()
        self._outbox: Any = context.Queue()
        fast = cpu_fast_paths_enabled()
        self._workers = [
            context.Process(
                target=_serve,
                args=(work, sampler, threads, fast, os.getpid(), self._inbox, self._outbox),
                daemon=True,
                name=f"metaacdc-evaluation-{index}",
            )
            for index in range(processes)
        ]

    def __enter__(self) -> EvaluationPool:
        # Workers inherit an ignored SIGINT (it survives exec): a Ctrl-C reaches the whole
        # process group, and only this process should handle it, workers being stopped by
        # __exit__ instead of printing tracebacks, also while they are still importing.
        # (Only the main thread may change signal handlers.)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            for worker in self._workers:
                worker.start()
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for _ in self._workers:
            self._inbox.put(None)  # one stop sign each; a busy worker is terminated instead
        if kind is not None:
            for worker in self._workers:
                worker.terminate()
        for worker in self._workers:
            worker.join()
        for channel in (self._inbox, self._outbox):
            channel.cancel_join_thread()  # never block on items nobody will read
            channel.close()

    def results(self, numbers: Sequence[int]) -> Iterator[tuple[int, float]]:
        """``(k, work(sampler.episode(numbers[k])))`` for every ``k``, in the order the
        workers finish them.

        Raises:
            Whatever ``work`` raised in a worker (re-raised here; an exception that cannot
            be pickled arrives as a RuntimeError carrying its traceback), or RuntimeError
            when a worker dies (killed, out of memory).
        """
        for k, number in enumerate(numbers):
            self._inbox.put((k, number))
        for _ in range(len(numbers)):
            k, value, failure = self._next_result()
            if failure is not None:
                raise failure
            yield k, value

    def _next_result(self) -> tuple[int, float, BaseException | None]:
        while True:
            try:
                return self._outbox.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [worker for worker in self._workers if worker.exitcode is not None]
                if not dead:  # none ends before its stop sign, unless it failed
                    continue
                try:  # what it sent before it ended (its failure), or another's result
                    return self._outbox.get(timeout=_POLL_S)
                except queue.Empty:
                    worker = dead[0]
                    raise RuntimeError(
                        f"evaluation worker {worker.name} (pid {worker.pid}) ended "
                        f"unexpectedly with exit code {worker.exitcode} (killed, or out of "
                        "memory?); the tasks finished so far are kept"
                    ) from None


def _serve(
    work: Callable[[Episode], float],
    sampler: IndexedSampler,
    threads: int,
    fast: bool,
    parent: int,
    inbox: Any,
    outbox: Any,
) -> None:
    """A worker's loop: take ``(k, number)`` until a stop sign, send back results; the CPU
    fast paths on or off as ``fast`` says (the parent's setting)."""
    # a Ctrl-C reaches the whole process group: only the parent handles it (and stops us)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    with cpu_fast_paths(fast), reuse_freed_memory():
        while (item := inbox.get()) is not None:
            if not _parent_alive(parent):  # nobody reads the results
                return
            k, number = item
            try:
                outbox.put((k, work(sampler.episode(number)), None))
            except Exception as error:  # handed to the parent, which raises it
                outbox.put((k, float("nan"), _portable(error)))
                return


def _parent_alive(parent: int) -> bool:
    """Whether the process that started this worker (pid ``parent``) still runs; a forked
    worker's parent process is the fork server, so this asks the pid itself."""
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else: the pid was reused
        return False
    return True


def _portable(error: Exception) -> BaseException:
    """``error`` if it survives pickling, else a RuntimeError carrying its traceback."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        text = "".join(traceback.format_exception(error))
        return RuntimeError(f"an evaluation worker failed:\n{text}")
    return error
