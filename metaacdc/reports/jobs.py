"""`metaacdc curve --jobs N`: several runs of the grid at once, each in a process of its own.

A GPU run of the grid uses a few GiB of a card of tens, so several fit side by side. Each
job is a fresh interpreter (a ``spawn`` process: forking a process that may hold CUDA is
unsafe) that calls :func:`metaacdc.reports.grid.run_one`, the work the one-process grid
does for each run, so a job is resumable exactly as a run of the one-process grid is, and
takes the same locks (a run another ``curve`` command holds is skipped as busy). This
process only starts jobs, relays what they say and waits for them:

* a job's lines (its log, and whatever it prints) reach this process's output prefixed
  with the run's name, one whole line at a time; its progress bars are off;
* a job's ``ConfigError`` (a user's mistake) is reported in one line naming the run, and
  the other jobs go on; an unexpected error is reported with its traceback, each line
  prefixed with the run's name; a job that dies without a word (killed, out of memory)
  is reported with its exit code; all of them land in :class:`GridOutcome`;
* on Ctrl-C (or SIGTERM, or an error here) every job saves its run, as one ``metaacdc
  train`` does: this process asks each job to stop (a job acts on the first signal only,
  however many Ctrl-C the terminal also sends it, so nothing interrupts its save), waits
  for all of them, then raises the ``KeyboardInterrupt`` as the one-process grid does.

On the CPU, each of the ``N`` jobs runs ``(threads of this process) / N`` intra-op threads
(at least one), so they do not oversubscribe the cores. ``--jobs auto`` is 1 there: runs
side by side would share the same cores, which a single run already uses.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext, SpawnProcess
from types import FrameType
from typing import Literal, TextIO, cast

import torch

from metaacdc.errors import ConfigError
from metaacdc.evaluation.pool import default_threads
from metaacdc.reports.grid import GridOutcome, GridRun, run_one
from metaacdc.runtime.device import resolve_device

#: ``--jobs auto`` gives each run its largest estimated peak memory plus this share
JOBS_MARGIN = 0.1


def auto_jobs(free_bytes: int, peaks_gib: Sequence[float], margin: float = JOBS_MARGIN) -> int:
    """How many runs fit at once in ``free_bytes`` of device memory: each is given the
    largest of ``peaks_gib`` (the estimated peaks of the runs left to do) plus ``margin``;
    at least 1, at most one job per run."""
    if not peaks_gib:
        return 1
    per_run = max(peaks_gib) * 2**30 * (1 + margin)
    return max(1, min(len(peaks_gib), int(free_bytes // per_run)))


def resolve_jobs(
    jobs: int | Literal["auto"], waiting: Sequence[GridRun], log: Callable[[str], None]
) -> int:
    """The number of jobs to run ``waiting`` (the grid's runs not yet finished and
    evaluated) with: ``jobs``, at most one per run; for ``"auto"``, on CUDA
    :func:`auto_jobs` of the device's free memory and the runs' estimated peaks
    (:func:`metaacdc.reports.estimate.estimate_peaks`, a few seconds per model on the CPU),
    and 1 on the CPU (see the module docstring). Logs what ``"auto"`` chose and why."""
    if jobs != "auto":
        return max(1, min(jobs, len(waiting)))
    if not waiting:
        return 1
    device = resolve_device(waiting[0].config.device)
    if device.type != "cuda":
        log("--jobs auto: 1 job on the CPU (runs side by side would share its cores)")
        return 1
    from metaacdc.reports.estimate import estimate_peaks

    free, _ = torch.cuda.mem_get_info(device)
    peaks = estimate_peaks([run.config for run in waiting])
    chosen = auto_jobs(free, peaks)
    log(
        f"--jobs auto: {chosen} job(s): {free / 2**30:.1f} GiB free on {device}, largest "
        f"estimated peak {max(peaks):.1f} GiB per run + {JOBS_MARGIN:.0%}, "
        f"{len(waiting)} run(s) to do"
    )
    return chosen


@dataclass(frozen=True)
class _Work:
    """What every job is told besides its run (picklable, for the ``spawn`` processes)."""

    tasks: int
    processes: int
    stop_after: int | None
    threads: int | None  # intra-op threads on the CPU; None: torch's default (GPU)
    prepare: Callable[[], object] | None  # called first (a fresh interpreter has no plugins)


@dataclass
class _Job:
    """A started job: its run, process and the reading end of its messages."""

    index: int
    run: GridRun
    process: SpawnProcess
    messages: Connection
    result: tuple[str, str] | None = None
    reading: bool = True


def run_jobs(
    runs: Sequence[GridRun],
    waiting: Sequence[GridRun],
    jobs: int,
    *,
    tasks: int,
    processes: int = 1,
    stop_after: int | None = None,
    prepare: Callable[[], object] | None = None,
    log: Callable[[str], None] = print,
) -> GridOutcome:
    """Work on the ``waiting`` runs of ``runs`` (those not yet finished and evaluated) with
    up to ``jobs`` processes at once, each calling :func:`run_one` for one run; report the
    others as skipped. ``prepare`` (picklable: a module-level function) is called first in
    each job's process, e.g. to register the plugins' backbones there too.

    Raises:
        KeyboardInterrupt: after every job saved its run and ended.
    """
    outcome = GridOutcome([run.run_dir for run in runs], busy=0)
    to_do = {run.run_dir for run in waiting}
    queue: deque[tuple[int, GridRun]] = deque()
    for index, run in enumerate(runs, 1):
        if run.run_dir in to_do:
            queue.append((index, run))
        else:
            log(f"[{index}/{len(runs)}] {run.name}: finished and evaluated; skipped")
    cpu = bool(waiting) and resolve_device(waiting[0].config.device).type == "cpu"
    threads = default_threads(jobs) if cpu else None
    work = _Work(tasks, processes, stop_after, threads, prepare)
    context = multiprocessing.get_context("spawn")
    running: list[_Job] = []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                index, run = queue.popleft()
                job = _start(context, index, run, work, running)
                log(f"[{index}/{len(runs)}] {run.name}: started (process {job.process.pid})")
            _serve(running, outcome, log, stopping=False)
    except BaseException:  # Ctrl-C, SIGTERM or an error here: the jobs save and end
        with _handling(_ignore, signal.SIGINT, signal.SIGTERM):  # a 2nd Ctrl-C changes nothing
            if running:
                log(f"stopping: waiting for {len(running)} job(s) to save their runs")
            for job in running:
                if job.process.exitcode is None:
                    job.process.terminate()  # SIGTERM: a Ctrl-C to the job (see _work)
            while running:
                _serve(running, outcome, log, stopping=True)
        raise
    # in the grid's order, not in the order the jobs happened to end: the closing lines
    # that name them do not depend on timing
    rank = {run.name: index for index, run in enumerate(runs)}
    outcome.mistakes = dict(sorted(outcome.mistakes.items(), key=lambda item: rank[item[0]]))
    outcome.failures = dict(sorted(outcome.failures.items(), key=lambda item: rank[item[0]]))
    return outcome


def _start(
    context: SpawnContext, index: int, run: GridRun, work: _Work, running: list[_Job]
) -> _Job:
    """Start the job of ``run`` and add it to ``running`` (before it starts, so that a
    Ctrl-C meanwhile cannot lose it)."""
    messages, sending = context.Pipe(duplex=False)
    process = context.Process(
        target=_work, args=(run, work, sending), name=f"metaacdc-curve-{run.name}"
    )
    job = _Job(index, run, process, messages)
    running.append(job)
    try:
        # the job inherits an ignored SIGINT (it survives exec) until it can save its run
        # (see _work): a Ctrl-C while it imports torch leaves no traceback
        with _handling(signal.SIG_IGN, signal.SIGINT):
            process.start()
    finally:
        sending.close()  # the job's end: the reading end sees EOF once the job ends
        if process.pid is None:  # never started
            running.remove(job)
            messages.close()
    return job


def _serve(
    running: list[_Job], outcome: GridOutcome, log: Callable[[str], None], *, stopping: bool
) -> None:
    """Wait for the next messages or ends of the ``running`` jobs, relay them, and report
    and remove the jobs that ended."""
    reading = [job for job in running if job.reading]
    ready = wait([job.messages for job in reading] + [job.process.sentinel for job in running])
    for job in reading:
        if job.messages in ready:
            try:
                kind, text = job.messages.recv()
            except EOFError:  # the job ended and everything it sent was read
                job.reading = False
                continue
            except Exception as error:  # a message cut by a Ctrl-C: the rest is unreadable
                job.reading = False
                log(f"{job.run.name}: its messages could not be read further ({error})")
                continue
            _relay(job, kind, text, log)
        elif job.process.sentinel in ready and not job.messages.poll():
            job.reading = False  # ended, nothing left (a forked grandchild holds the pipe)
    for job in [job for job in running if not job.reading]:
        job.process.join()
        job.messages.close()
        running.remove(job)
        _report(job, outcome, log, stopping)


def _relay(job: _Job, kind: str, text: str, log: Callable[[str], None]) -> None:
    """One message of a job: a line for the output (prefixed with the run's name) or its
    final word."""
    if kind in ("log", "out"):
        log(f"{job.run.name}: {text}")
    elif kind == "err":
        print(f"{job.run.name}: {text}", file=sys.stderr, flush=True)
    else:
        job.result = (kind, text)


def _report(job: _Job, outcome: GridOutcome, log: Callable[[str], None], stopping: bool) -> None:
    """What became of an ended job, in ``outcome`` and in one line (an unexpected error's
    traceback on stderr too)."""
    name = job.run.name
    if job.result is None:
        code = job.process.exitcode
        if stopping:
            log(f"{name}: stopped (exit code {code}); rerun to continue")
            return
        message = (
            f"its process ended with exit code {code} without a word (killed, or out of memory?)"
        )
        log(f"{name}: failed: {message}")
        outcome.failures[name] = message
        return
    kind, text = job.result
    if kind == "done":
        outcome.busy += text == "busy"
    elif kind == "interrupted":
        log(f"{name}: interrupted; what it finished is saved, rerun to continue")
    elif kind == "mistake":
        log(f"{name}: error: {text}")
        outcome.mistakes[name] = text
    else:  # "failure": an unexpected error, with its traceback
        for line in text.rstrip().splitlines():
            print(f"{name}: {line}", file=sys.stderr, flush=True)
        summary = text.rstrip().splitlines()[-1]
        log(f"{name}: failed: {summary}")
        outcome.failures[name] = summary


_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers


@contextlib.contextmanager
def _handling(handler: _Handler, *signals: signal.Signals) -> Iterator[None]:
    """``handler`` for ``signals`` within the block, the previous handlers after it (only
    the main thread may change signal handlers: elsewhere, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield
    finally:
        for number, before in previous.items():
            signal.signal(number, before)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A handler that does nothing. Not ``SIG_IGN``: a signal that arrived just before
    would then raise ``OSError`` ("ignored due to race condition") when Python handles it."""


class _InterruptOnce:
    """A job's SIGINT and SIGTERM handler: the first signal raises ``KeyboardInterrupt``
    (the trainer saves the run), any later one does nothing, so the terminal's Ctrl-C and
    the parent's SIGTERM together cannot interrupt the save."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


class _Lines(io.TextIOBase):
    """A job's stdout or stderr: each whole line sent to the parent as a ``kind``
    message (what reaches it after the parent ended is dropped)."""

    def __init__(self, sending: Connection, kind: str) -> None:
        super().__init__()
        self._sending, self._kind, self._pending = sending, kind, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            _send(self._sending, self._kind, line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            _send(self._sending, self._kind, self._pending)
            self._pending = ""


def _send(sending: Connection, kind: str, text: str) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: the run goes on regardless
        sending.send((kind, text))


def _work(run: GridRun, work: _Work, sending: Connection) -> None:
    """A job's process: :func:`run_one` for ``run``, its lines and its final word (``done``
    with the run's status, ``interrupted``, ``mistake`` or ``failure``) sent to the parent."""
    interrupt = _InterruptOnce()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    sys.stdout = cast(TextIO, _Lines(sending, "out"))
    sys.stderr = cast(TextIO, _Lines(sending, "err"))
    result: tuple[str, str]
    try:
        if work.prepare is not None:
            work.prepare()
        if work.threads is not None:
            torch.set_num_threads(work.threads)
        status = run_one(
            run,
            tasks=work.tasks,
            processes=work.processes,
            stop_after=work.stop_after,
            progress=False,
            log=lambda line: _send(sending, "log", line),
        )
        result = ("done", status)
    except KeyboardInterrupt:
        result = ("interrupted", "")
    except (ConfigError, FileNotFoundError) as error:  # a user's mistake, as the CLI has it
        result = ("mistake", str(error))
    except Exception:
        result = ("failure", traceback.format_exc())
    sys.stdout.flush()
    sys.stderr.flush()
    _send(sending, *result)
    sending.close()
