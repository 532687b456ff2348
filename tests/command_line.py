"""`metaacdc` command lines run in this process, as ``python -m metaacdc`` runs them.

A fresh interpreter costs several seconds (torch, torchvision and learn2learn imports), so
the tables of one-line errors run here; each command keeps one case that starts a real
process, which tests the console-script path itself: `info` and `evaluate` in tests/cli,
`curve` and `report` in tests/reports/test_curves.py, `train` in
tests/training/test_trainer.py (its SIGTERM test), and scripts/bench_gpu_runs.py in
tests/test_bench_gpu_runs.py.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from metaacdc.cli import main
from tests.conftest import REPO

#: the warnings a fresh interpreter does not print (Python's default filters)
SILENT_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@dataclass(frozen=True)
class Outcome:
    """What a `metaacdc` process would give: its exit code, stdout and stderr."""

    code: int | str | None
    out: str
    err: str

    def one_error_line(self) -> str:
        """The single line on stderr of a refused command line (exit code 2); fails the test
        unless there is exactly one."""
        lines = self.err.strip().splitlines()
        assert self.code == 2, (self.code, self.err)
        assert "Traceback" not in self.err
        assert len(lines) == 1, self.err
        return lines[0]


def run_in_process(
    argv: Sequence[str],
    capfd: pytest.CaptureFixture[str],
    entry: Callable[[list[str]], int] = main,
) -> Outcome:
    """`metaacdc ARGV` in this process (or another command's ``entry`` point): the exit
    code (``entry``'s return value, or the ``SystemExit`` argparse raises, as
    ``python -m metaacdc`` exits with either), what was written to the stdout and stderr file
    descriptors, and on stderr also each warning that a fresh interpreter would have printed
    there. An exception that escapes ``entry`` (a traceback, in a process) fails the test
    where it is raised."""
    capfd.readouterr()  # only what this command writes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code: int | str | None = entry(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    captured = capfd.readouterr()
    shown = [
        f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n"
        for w in caught
        if not issubclass(w.category, SILENT_BY_DEFAULT)
    ]
    return Outcome(code, captured.out, captured.err + "".join(shown))


def run_process(argv: Sequence[str]) -> Outcome:
    """`metaacdc ARGV` in a fresh interpreter (``python -m metaacdc``), from the repository
    root."""
    result = subprocess.run(
        [sys.executable, "-m", "metaacdc", *argv], capture_output=True, text=True, cwd=REPO
    )
    return Outcome(result.returncode, result.stdout, result.stderr)
