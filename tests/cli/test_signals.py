"""How `metaacdc` stops: Ctrl-C exits 130 ("interrupted"), SIGTERM 143 ("terminated"), both
through the same ``KeyboardInterrupt`` that makes training save a checkpoint (the real
process and its checkpoint: tests/training/test_trainer.py's SIGTERM test)."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable

import pytest

import metaacdc.cli.info
from tests.command_line import run_in_process


def _sigterm() -> None:
    signal.raise_signal(signal.SIGTERM)


def _ctrl_c() -> None:
    raise KeyboardInterrupt  # what Python's SIGINT handler raises


@pytest.mark.parametrize(
    ("stop", "code", "line"),
    [
        (_sigterm, 143, "metaacdc info: terminated (SIGTERM)"),
        (_ctrl_c, 130, "metaacdc info: interrupted"),
    ],
    ids=["sigterm", "ctrl-c"],
)
def test_a_stopped_command_exits_128_plus_the_signal(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    stop: Callable[[], None],
    code: int,
    line: str,
) -> None:
    reached: list[bool] = []

    def stopped(args: argparse.Namespace) -> int:
        try:
            stop()
        except KeyboardInterrupt:  # what the trainer catches to save its checkpoint
            reached.append(True)
            raise
        raise AssertionError("the command was not stopped")

    monkeypatch.setattr(metaacdc.cli.info, "run", stopped)
    before = signal.getsignal(signal.SIGTERM)
    outcome = run_in_process(["info"], capfd)
    assert reached == [True]
    assert (outcome.code, outcome.err.strip()) == (code, line)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
