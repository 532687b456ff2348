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
