"""The bad-input table (tests/bad_inputs/): every user mistake and damaged file it lists is
refused with one clear line (a command line: exit 2, one stderr line, no traceback; a Python
call: the documented exception, a one-line message) and writes nothing."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import tests.bad_inputs
from tests.bad_inputs.table import Case, Templates, Workspace, check
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def _all_cases() -> list[Case]:
    cases = []
    for module in pkgutil.iter_modules(tests.bad_inputs.__path__):
        if module.name != "table":
            found = importlib.import_module(f"tests.bad_inputs.{module.name}")
            cases.extend(getattr(found, "CASES", ()))
    return cases


CASES = _all_cases()


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    return Templates(tmp_path_factory.mktemp("bad-input-templates"))


def test_the_table_names_each_case_once() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_the_readme_states_the_table_size() -> None:
    assert f"the table of {len(CASES)} bad inputs" in " ".join(
        (REPO / "README.md").read_text().split()
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
    case: Case,
    templates: Templates,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    check(case, Workspace(tmp_path, templates), capfd)
