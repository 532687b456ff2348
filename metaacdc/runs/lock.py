"""Claims on the work of a run folder, so two processes never write the same thing at once.

A second ``metaacdc train`` of a folder being trained, or a second evaluation of the same
tasks, stops with one clear line instead of interleaving checkpoints or journals; and
``metaacdc curve`` commands started side by side on one ``--out`` (one per core or GPU)
share the grid out, each skipping the runs another is working on.

A claim is an OS file lock (``filelock``: ``flock`` on POSIX), released by the OS when the
process ends however it ends, so a killed run leaves no stale claim behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from metaacdc.errors import ConfigError


class RunBusyError(ConfigError):
    """Another process holds the claim on this work."""


def training_lock(run_dir: Path) -> Path:
    """The lock file claimed while ``run_dir`` is being trained."""
    return Path(run_dir) / ".training.lock"


def is_claimed(lock_file: Path) -> bool:
    """Whether a process (another, or this one through another claim) holds ``lock_file``
    now. Creates nothing: a lock file that does not exist is not held. It takes the lock
    for an instant to find out, so a claim attempted in that instant is refused as busy."""
    if not lock_file.is_file():
        return False
    lock = FileLock(lock_file, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:  # a lock file this process cannot open: nobody it can see holds it
        return False
    lock.release()
    return False


def evaluation_lock(csv: Path) -> Path:
    """The lock file claimed while the evaluation that writes ``csv`` runs."""
    return csv.with_name(f".{csv.name}.lock")


@contextmanager
def claim(lock_file: Path, work: str, *, hold: bool = True) -> Iterator[None]:
    """Hold ``lock_file`` for the ``with`` block; nothing when ``hold`` is false (the
    processes of a ``torch.distributed`` job other than rank 0, which write nothing).

    Raises:
        RunBusyError: another process holds it; the message names ``work``.
    """
    if not hold:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunBusyError(
            f"{work} is in progress in another process (it holds {lock_file}); "
            "wait for it to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()
