"""Resumable evaluation: finished tasks are journalled, an interrupted evaluation resumes to
the uninterrupted result, and a journal is trusted only for the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import metaacdc.evaluation.evaluator as evaluation_module
from metaacdc.evaluation.journal import TaskJournal
from metaacdc.evaluation.run import evaluate_run
from tests.tiny_runs import make_run


def test_interrupted_evaluation_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(tmp_path / "run").root
    whole = evaluate_run(run, tasks=6, device="cpu", progress=False)
    whole.csv.unlink()
    original = evaluation_module.task_accuracy
    calls = {"n": 0, "interrupt_at": 4}

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == calls["interrupt_at"]:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluation_module, "task_accuracy", counted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(run, tasks=6, device="cpu", progress=False)
    journals = sorted(whole.csv.parent.glob(whole.csv.name + ".partial.*"))
    assert [p.name for p in journals] == [whole.csv.name + ".partial.0"]
    assert not whole.csv.exists()

    calls.update(n=0, interrupt_at=0)
    again = evaluate_run(run, tasks=6, device="cpu", progress=False)
    assert calls["n"] == 3, "only the three unfinished tasks are evaluated again"
    np.testing.assert_array_equal(again.result.accuracies, whole.result.accuracies)
    assert again.csv.is_file()
    assert not list(whole.csv.parent.glob("*.partial.*")), "the journal is removed when done"


def test_a_journal_is_trusted_only_for_the_same_weights(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "test.csv.partial"
    first = TaskJournal(path, "weights-a")
    first.record(0, 0.5)
    first.record(3, 0.75)
    first.close()
    assert TaskJournal(path, "weights-a").finished() == {0: 0.5, 3: 0.75}
    other = TaskJournal(path, "weights-b")
    assert other.finished() == {}
    other.record(1, 0.25)  # replaces the stale file
    other.close()
    assert TaskJournal(path, "weights-b").finished() == {1: 0.25}
    assert TaskJournal(path, "weights-a").finished() == {}


def test_journals_of_several_processes_are_read_together_and_a_cut_line_is_skipped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "test.csv.partial"
    for rank, entries in ((0, [(0, 0.5), (2, 1.0)]), (1, [(1, 0.25)])):
        journal = TaskJournal(path, "w", rank)
        for index, accuracy in entries:
            journal.record(index, accuracy)
        journal.close()
    with (tmp_path / "test.csv.partial.1").open("a") as stream:
        stream.write("3,0.2")  # killed mid-write: "3,0.25\n" never completed
    assert TaskJournal(path, "w", rank=0).finished() == {0: 0.5, 1: 0.25, 2: 1.0}
    TaskJournal(path, "w").remove()
    assert not list(tmp_path.iterdir())
