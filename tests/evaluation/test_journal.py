"""Resumable evaluation: finished tasks are journalled, an interrupted evaluation resumes to
the uninterrupted result, and a journal is trusted only for the same evaluation: a foreign,
repeated, impossible or garbled row sets its file aside with one note, never merged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import metaacdc.evaluation.evaluator as evaluation_module
from metaacdc.data import prepare
from metaacdc.evaluation.journal import TaskJournal
from metaacdc.evaluation.run import evaluate_run
from tests.tiny_runs import IMAGE_SIZE, IMAGES_PER_CLASS, make_run

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")


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


def _interrupted(run: Path, monkeypatch: pytest.MonkeyPatch, after: int, **settings: Any) -> None:
    """``evaluate_run(run, tasks=6, **settings)`` interrupted after ``after`` tasks."""
    original = evaluation_module.task_accuracy
    calls = {"n": 0}

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(evaluation_module, "task_accuracy", counted)
        with pytest.raises(KeyboardInterrupt):
            evaluate_run(run, tasks=6, device="cpu", progress=False, **settings)


def test_a_foreign_row_is_never_merged_and_the_result_is_the_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path / "run").root
    whole = evaluate_run(run, tasks=6, device="cpu", progress=False)
    whole.csv.unlink()
    _interrupted(run, monkeypatch, after=3)
    journal = whole.csv.with_name(whole.csv.name + ".partial.0")
    stranger = TaskJournal(tmp_path / "elsewhere.partial", "another evaluation")
    stranger.record(4, 1.0)  # a perfect score, well formed, from another journal
    stranger.close()
    foreign = (tmp_path / "elsewhere.partial.0").read_text().splitlines()[1]
    with journal.open("a") as stream:
        stream.write(foreign + "\n")
    capsys.readouterr()
    again = evaluate_run(run, tasks=6, device="cpu", progress=False)
    np.testing.assert_array_equal(again.result.accuracies, whole.result.accuracies)
    notes = [line for line in capsys.readouterr().err.splitlines() if "journal" in line]
    assert notes == [
        f"note: setting aside the evaluation journal {journal}: line 5 does not belong to this "
        "evaluation; its tasks are evaluated again"
    ]
    assert not journal.exists()


def test_a_journal_of_the_same_run_on_other_data_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same run, split, seed, tasks and steps (so the same CSV name), other pixels."""
    run = make_run(tmp_path / "run").root
    cache = tmp_path / "cache"
    prepare(
        "synthetic",
        cache,
        image_size=IMAGE_SIZE,
        splits=("test",),
        progress=False,
        images_per_class=IMAGES_PER_CLASS,
        seed=1,
    )
    on_other_data = evaluate_run(run, tasks=6, device="cpu", progress=False, data=str(cache))
    on_other_data.csv.unlink()
    _interrupted(run, monkeypatch, after=3)  # on the run's own data
    capsys.readouterr()
    again = evaluate_run(run, tasks=6, device="cpu", progress=False, data=str(cache))
    np.testing.assert_array_equal(again.result.accuracies, on_other_data.result.accuracies)
    assert "was written for another evaluation" in capsys.readouterr().err


def _rows(journal: TaskJournal, *entries: tuple[int, float]) -> None:
    for index, accuracy in entries:
        journal.record(index, accuracy)
    journal.close()


DAMAGES = {
    # what is done to a journal holding tasks 0 and 1 (1/4 and 3/4 right of 4 queries)
    "foreign row": lambda text, row: text + row(2, 0.5).replace("0.5,", "0.25,"),
    "duplicate task": lambda text, row: text + row(1, 0.75),
    "task out of range": lambda text, row: text + row(6, 0.5),
    "impossible accuracy": lambda text, row: text + row(2, 0.3),
    "accuracy over 1": lambda text, row: text + row(2, 1.25),
    "garbage line": lambda text, row: text + "hello world\n",
    "older format": lambda text, row: "# weights abc\n0,0.25\n",
}


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_a_damaged_journal_is_set_aside_with_one_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    path = tmp_path / "test.csv.partial"
    writer = TaskJournal(path, "key")  # checks nothing: it writes any row it is given
    _rows(writer, (0, 0.25), (1, 0.75))
    file = tmp_path / "test.csv.partial.0"

    def row(index: int, accuracy: float) -> str:
        return f"{index},{accuracy!r},{writer._check(index, accuracy)}\n"

    file.write_text(DAMAGES[damage](file.read_text(), row))
    reader = TaskJournal(path, "key", tasks=6, queries=4)
    assert reader.finished() == {}
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 1 and notes[0].startswith(
        f"note: setting aside the evaluation journal {file}: "
    ), notes
    assert notes[0].endswith("; its tasks are evaluated again")
    # the next write replaces the file with this evaluation's rows only
    reader.record(3, 0.5)
    reader.close()
    assert TaskJournal(path, "key", tasks=6, queries=4).finished() == {3: 0.5}


def test_a_journal_that_is_not_text_is_set_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "test.csv.partial.0").write_bytes(b"\xff\xfe\x00garbage\n")
    assert TaskJournal(tmp_path / "test.csv.partial", "key").finished() == {}
    assert "it is not text" in capsys.readouterr().err


def test_one_task_in_two_files_sets_the_whole_journal_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "test.csv.partial"
    _rows(TaskJournal(path, "key", rank=0), (0, 0.5), (2, 0.25))
    _rows(TaskJournal(path, "key", rank=1), (1, 0.5), (2, 0.75))
    assert TaskJournal(path, "key").finished() == {}
    assert "task 2 is in" in capsys.readouterr().err
    # only rank 0 speaks: the other processes of a torch.distributed job read the same files
    assert TaskJournal(path, "key", rank=1).finished() == {}
    assert capsys.readouterr().err == ""
