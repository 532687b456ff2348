"""A row of the bad-input table (:class:`Case`), the folder it runs in (:class:`Workspace`),
and the check every row must pass (:func:`check`)."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from metaacdc.errors import ConfigError
from tests.command_line import run_in_process


@dataclass
class Templates:
    """Things several rows start from, built once per test session and copied into each
    row's workspace: ``build(name, make)`` makes ``name`` with ``make(folder)`` once."""

    root: Path
    made: dict[str, Path] = field(default_factory=dict)

    def build(self, name: str, make: Callable[[Path], Any]) -> Path:
        if name not in self.made:
            target = self.root / name
            make(target)
            self.made[name] = target
        return self.made[name]


@dataclass
class Workspace:
    """The folder a row runs in (also the current directory, so default outputs such as
    ``runs/`` land here and count as written)."""

    root: Path
    templates: Templates

    def write(self, name: str, content: str | bytes) -> Path:
        """A file ``name`` in the workspace with ``content``."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def copy(self, template: str, make: Callable[[Path], Any], name: str | None = None) -> Path:
        """A copy of the session's template ``template`` (built by ``make(folder)`` the
        first time a row asks for it) in the workspace, as ``name`` (default the template's
        name)."""
        source = self.templates.build(template, make)
        target = self.root / (name or template)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        return target


@dataclass(frozen=True)
class Case:
    """One bad input: set up in a workspace, then either a `metaacdc` command line that must
    be refused with one line on stderr (exit 2) matching ``message``, or a Python call that
    must raise ``raises`` with a message matching ``message``. Either way nothing in the
    workspace may change.

    ``argv(ws)`` / ``call(ws)`` do their own set-up (files, run folders) and return the
    command line, or the call to make (a function of no arguments).
    """

    name: str
    message: str
    argv: Callable[[Workspace], list[str]] | None = None
    call: Callable[[Workspace], Callable[[], object]] | None = None
    raises: type[BaseException] = ConfigError
    #: paths (relative to the workspace) the refusal may legitimately change
    may_change: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert (self.argv is None) != (self.call is None), self.name


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path) with a digest of its bytes, and every
    folder (marked ``dir``): what "nothing written" compares."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        state[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def check(case: Case, ws: Workspace, capfd: pytest.CaptureFixture[str]) -> str:
    """Run ``case`` in ``ws`` and assert what every row promises; returns the message."""
    if case.argv is not None:
        argv = case.argv(ws)
        before = snapshot(ws.root)
        message = run_in_process(argv, capfd).one_error_line()
    else:
        assert case.call is not None
        action = case.call(ws)
        before = snapshot(ws.root)
        with pytest.raises(case.raises) as raised:
            action()
        message = str(raised.value)
        assert "\n" not in message.strip(), message
    assert re.search(case.message, message), (case.message, message)
    after = snapshot(ws.root)
    changed = {
        key
        for key in set(before) | set(after)
        if before.get(key) != after.get(key)
        and not any(key == kept or key.startswith(kept + "/") for kept in case.may_change)
    }
    assert not changed, f"{case.name}: the refusal changed {sorted(changed)}"
    return message
