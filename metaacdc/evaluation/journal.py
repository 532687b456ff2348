"""A journal of finished evaluation tasks, so that an interrupted evaluation resumes where
it stopped instead of starting over (3,000 tasks can take an hour on a CPU).

The evaluator appends one ``task,accuracy,check`` line per finished task; run again with the
same settings, it reads them back and evaluates only the missing tasks, and the journal is
deleted once the full result is written. Every task is drawn from (seed, task index) and
evaluated on its own, so a resumed evaluation gives the numbers of an uninterrupted one.

A journal is trusted only for the same evaluation: its first line holds a key of it (the
model's weights, the data, the tasks and the adaptation steps, see :func:`journal_key`),
and ``check`` is a hash of the row together with that key. A file is used only when every
complete line of it is a row this evaluation could have written: a task index in range and
not repeated, an accuracy that is a whole number of correct queries, and its check. Anything
else (a file of another evaluation, a row copied in from one, a duplicate, an impossible
value, garbage) sets the file aside with one note on stderr, and its tasks are evaluated
again: the result is always the uninterrupted one, never a merge with foreign rows. A last
line cut short by a kill (no newline) is skipped without a note.

Under ``torch.distributed`` each process writes its own file (``<name>.<rank>``) and every
process reads all of them, so an evaluation can resume with another number of processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

#: the first line of a journal file, followed by the evaluation's key
_HEADER = "# metaacdc evaluation journal 2, key "


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of ``model``'s parameters and buffers (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def journal_key(**identity: Any) -> str:
    """A short hash of what identifies one evaluation (JSON values: the weights'
    fingerprint, the data's checksum, the tasks, the adaptation steps, ...)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class DamagedJournalError(ValueError):
    """A journal file this evaluation must not use; the message says why."""


class TaskJournal:
    """The finished tasks of one evaluation, kept in ``<path>.<rank>`` files.

    Args:
        path: the journal's name (the result CSV's path with a ``.partial`` suffix).
        key: what identifies the evaluation (:func:`journal_key`, or at least
            :func:`weights_fingerprint` of the model being evaluated); rows written under
            another key are not used.
        rank: this process's rank; it writes ``<path>.<rank>``. Rank 0 prints the notes
            about files set aside.
        tasks: the evaluation's number of tasks; a row of a task index outside
            ``0 .. tasks - 1`` makes its file unusable. ``None``: not checked.
        queries: query images per task; an accuracy that is not a multiple of
            ``1 / queries`` makes its file unusable. ``None``: only ``[0, 1]`` is checked.
    """

    def __init__(
        self,
        path: Path,
        key: str,
        rank: int = 0,
        *,
        tasks: int | None = None,
        queries: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.key = key
        self.rank = rank
        self.tasks = tasks
        self.queries = queries
        self.own = self.path.with_name(f"{self.path.name}.{rank}")
        self._stream: TextIO | None = None
        self._trusted: dict[Path, dict[int, float]] | None = None
        self._noted: set[str] = set()

    def _files(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.*"))

    def finished(self) -> dict[int, float]:
        """Accuracies of the tasks already evaluated in this evaluation, by task index.

        Files written for another evaluation or damaged are set aside (a note on stderr
        says which and why; they are replaced when their process writes again, and removed
        with the journal); two files holding one task set the whole journal aside.
        """
        trusted: dict[Path, dict[int, float]] = {}
        for file in self._files():
            if not file.is_file():
                continue
            try:
                trusted[file] = self._entries_of(file)
            except DamagedJournalError as damage:
                self._note(f"setting aside the evaluation journal {file}: {damage}")
        done: dict[int, float] = {}
        for file, entries in trusted.items():
            twice = sorted(done.keys() & entries.keys())
            if twice:
                self._note(
                    f"setting aside the evaluation journal {self.path}.*: task {twice[0]} is "
                    f"in {file} and in another of its files"
                )
                trusted = {}
                done = {}
                break
            done.update(entries)
        self._trusted = trusted
        return done

    def _note(self, text: str) -> None:
        """One line on stderr (rank 0, once per message)."""
        if self.rank == 0 and text not in self._noted:
            self._noted.add(text)
            print(f"note: {text}; its tasks are evaluated again", file=sys.stderr)

    def record(self, index: int, accuracy: float) -> None:
        """Append one finished task (written through at once)."""
        if self._stream is None:
            if self._trusted is None:
                self.finished()
            assert self._trusted is not None
            keep = self._trusted.get(self.own, {})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = self.own.open("w")
            self._stream.write(_HEADER + self.key + "\n")
            self._write(keep.items())
        self._write([(int(index), float(accuracy))])

    def _check(self, index: int, accuracy: float) -> str:
        """The hash binding one row to this evaluation's key."""
        return hashlib.sha256(f"{self.key},{index},{accuracy!r}".encode()).hexdigest()[:16]

    def _entries_of(self, file: Path) -> dict[int, float]:
        """This file's entries.

        Raises:
            DamagedJournalError: the file was written for another evaluation, or a complete line
                of it is not a row this evaluation could have written.
        """
        try:
            text = file.read_bytes().decode()
        except UnicodeDecodeError:
            raise DamagedJournalError("it is not text") from None
        lines = text.split("\n")[:-1]  # a line cut short by a kill has no \n
        if not lines or lines[0] != _HEADER + self.key:
            raise DamagedJournalError(
                "it was written for another evaluation (other weights, data, tasks or steps) "
                "or by another version of metaacdc"
            )
        entries: dict[int, float] = {}
        for number, line in enumerate(lines[1:], start=2):
            index, accuracy = self._parse(line, number)
            if index in entries:
                raise DamagedJournalError(f"line {number} repeats task {index}")
            entries[index] = accuracy
        return entries

    def _parse(self, line: str, number: int) -> tuple[int, float]:
        """The task index and accuracy of row ``line`` (line ``number`` of its file)."""
        fields = line.split(",")
        try:
            index, accuracy, check = int(fields[0]), float(fields[1]), fields[2]
        except (ValueError, IndexError):
            raise DamagedJournalError(f"line {number} is not a row ({line[:40]!r})") from None
        if len(fields) != 3 or check != self._check(index, accuracy):
            raise DamagedJournalError(f"line {number} does not belong to this evaluation")
        if index < 0 or (self.tasks is not None and index >= self.tasks):
            raise DamagedJournalError(f"line {number}: task {index} is not one of its tasks")
        possible = math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0
        if possible and self.queries is not None:
            correct = accuracy * self.queries
            possible = abs(correct - round(correct)) <= 1e-6
        if not possible:
            per = f" with {self.queries} queries" if self.queries is not None else ""
            raise DamagedJournalError(f"line {number}: accuracy {accuracy!r} is impossible{per}")
        return index, accuracy

    def _write(self, entries: Iterable[tuple[int, float]]) -> None:
        assert self._stream is not None
        for index, accuracy in entries:
            self._stream.write(f"{index},{accuracy!r},{self._check(index, accuracy)}\n")
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
