"""A journal of finished evaluation tasks, so that an interrupted evaluation resumes where
it stopped instead of starting over (3,000 tasks can take an hour on a CPU).

The evaluator appends one ``task,accuracy`` line per finished task; run again with the same
settings, it reads them back and evaluates only the missing tasks, and the journal is
deleted once the full result is written. Every task is drawn from (seed, task index) and
evaluated on its own, so a resumed evaluation gives the numbers of an uninterrupted one.
A journal is trusted only for the same weights: its first line holds a fingerprint of the
model, and a journal with another fingerprint is discarded. Under ``torch.distributed``
each process writes its own file (``<name>.<rank>``) and every process reads all of them,
so an evaluation can resume with another number of processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import torch
from torch import nn

_HEADER = "# weights "


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of ``model``'s parameters and buffers (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class TaskJournal:
    """The finished tasks of one evaluation, kept in ``<path>.<rank>`` files.

    Args:
        path: the journal's name (the result CSV's path with a ``.partial`` suffix).
        fingerprint: :func:`weights_fingerprint` of the model being evaluated.
        rank: this process's rank; it writes ``<path>.<rank>``.
    """

    def __init__(self, path: Path, fingerprint: str, rank: int = 0) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.own = self.path.with_name(f"{self.path.name}.{rank}")
        self._stream: TextIO | None = None

    def _files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.*"))

    def finished(self) -> dict[int, float]:
        """Accuracies of the tasks already evaluated with these weights, by task index.
        Files written for other weights are ignored (and replaced when this process
        writes); an unfinished last line (a kill mid-write) is skipped."""
        done: dict[int, float] = {}
        for file in self._files():
            done.update(self._entries_of(file))
        return done

    def record(self, index: int, accuracy: float) -> None:
        """Append one finished task (written through at once)."""
        if self._stream is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keep = self._entries_of(self.own)
            self._stream = self.own.open("w")
            self._stream.write(_HEADER + self.fingerprint + "\n")
            self._write(keep.items())
        self._write([(int(index), float(accuracy))])

    def _entries_of(self, file: Path) -> dict[int, float]:
        """This file's entries if it was written for these weights (nothing otherwise)."""
        if not file.is_file():
            return {}
        lines = file.read_text().split("\n")[:-1]  # a line cut short by a kill has no \n
        if not lines or lines[0] != _HEADER + self.fingerprint:
            return {}
        entries = {}
        for line in lines[1:]:
            index, _, accuracy = line.partition(",")
            try:
                entries[int(index)] = float(accuracy)
            except ValueError:
                continue
        return entries

    def _write(self, entries: Iterable[tuple[int, float]]) -> None:
        assert self._stream is not None
        for index, accuracy in entries:
            self._stream.write(f"{index},{accuracy!r}\n")
        self._stream.flush()

    def close(self) -> None:
        """Stop writing (the entries stay on disk)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def remove(self) -> None:
        """Delete every process's file: the evaluation is complete."""
        self.close()
        for file in self._files():
            file.unlink(missing_ok=True)
