"""The documentation can be trusted: every `metaacdc` command it shows is accepted by the
CLI, every script and file it names exists, and every committed table has the columns of
the command that writes it."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from metaacdc.cli import build_parser
from metaacdc.reports.curves import COLUMNS
from metaacdc.reports.model_table import TABLE_COLUMNS
from metaacdc.training.trainer import METRICS
from tests.conftest import REPO

DOCS = [REPO / "README.md", REPO / "data" / "README.md", REPO / "episodes" / "README.md"]
DOCS += sorted((REPO / "docs").glob("**/*.md"))
INLINE = re.compile(r"`([^`\n]+)`")
PROGRAMS = ("metaacdc", ".venv/bin/metaacdc")
#: paths in commands that must exist in the repository
REPO_PATH = re.compile(r"^(configs|episodes|scripts|docs)/")


def _words(command: str) -> list[str] | None:
    """The arguments of a `metaacdc` command line (environment assignments and synopsis
    brackets removed), or None when the line is not one."""
    words = shlex.split(command.replace("[", " ").replace("]", " "), comments=True)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    if not words or words[0] not in PROGRAMS:
        return None
    return words[1:]


def fenced_blocks(text: str) -> tuple[list[tuple[str, str]], str]:
    """The fenced code blocks of a Markdown text as (language, body), and the text left
    outside them."""
    blocks: list[tuple[str, str]] = []
    outside: list[str] = []
    language, body = None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(body)))
                language = None
        elif language is None:
            outside.append(line)
        else:
            body.append(line)
    return blocks, "\n".join(outside)


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, command, its arguments) for each `metaacdc` command in a shell block, and each
    inline code span that starts with `metaacdc` and gives an option (a bare `metaacdc
    train` in a sentence names the subcommand; it is not a command line)."""
    found = []
    for path in DOCS:
        where = str(path.relative_to(REPO))
        blocks, outside = fenced_blocks(path.read_text())
        for language, block in blocks:
            if language not in ("", "bash", "sh", "console"):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                words = _words(line)
                if words is not None:
                    found.append((where, line.strip(), words))
        for span in INLINE.findall(outside):
            words = _words(span)
            if words is not None and any(w.startswith("--") for w in words):
                found.append((where, span, words))
    return found


COMMANDS = documented_commands()


def test_docs_show_commands() -> None:
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize(("where", "command", "words"), COMMANDS, ids=[c for _, c, _ in COMMANDS])
def test_documented_command_parses(where: str, command: str, words: list[str]) -> None:
    try:
        build_parser().parse_args(words)
    except SystemExit as exit_:  # argparse's way of refusing a command line
        pytest.fail(f"{where}: `{command}` is refused by the CLI (exit {exit_.code})")
    for before, word in zip(["", *words], words):
        if REPO_PATH.match(word) and before != "--out":  # inputs must exist, outputs not
            # a shell pattern must match something
            found = any(REPO.glob(word)) if "*" in word else (REPO / word).exists()
            assert found, f"{where}: `{command}` names missing {word}"


def test_every_script_named_in_the_docs_exists() -> None:
    named = {m for path in DOCS for m in re.findall(r"scripts/[\w.-]+", path.read_text())}
    assert named, "no scripts/... named in the docs"
    missing = sorted(n for n in named if not (REPO / n).is_file())
    assert not missing, f"named in the docs but absent: {missing}"


def _markdown_header(path: Path) -> tuple[str, ...]:
    for line in path.read_text().splitlines():
        if line.startswith("| "):
            return tuple(cell.strip() for cell in line.strip("|").split("|"))
    raise AssertionError(f"{path}: no Markdown table")


def _script_constant(script: str, name: str) -> object:
    """A module-level constant of ``scripts/<script>`` (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(script, REPO / "scripts" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(script, module)  # a script's dataclasses look themselves up there
    spec.loader.exec_module(module)
    return getattr(module, name)


#: runs of scripts/bench_maml.py (and timed `metaacdc evaluate` runs): one row per
#: (run, job, side) of its printout; `ratio` as printed (this/reference for the project's
#: own rows, project/this for the others), `minutes_3000` its 3,000-task projection
BENCH_MAML_HISTORY = (
    "run",
    "code",
    "command",
    "job",
    "side",
    "tasks_per_s",
    "ratio",
    "round_ratios",
    "minutes_3000",
    "peak_mb",
    "note",
)
#: runs of scripts/bench_acdc.py: median ms per batch of each side and their ratio
BENCH_ACDC_HISTORY = ("run", "command", "plain_ms", "acdc_net_ms", "ratio", "note")

#: which command writes each kind of committed table, by file stem
TABLE_KINDS = {
    "curve": COLUMNS,
    "model_table": TABLE_COLUMNS,
    "metrics": METRICS,
    "gpu_runs": _script_constant("bench_gpu_runs.py", "COLUMNS"),
    # benchmark histories (docs/speed/): one row per run of a script that prints its results
    # instead of writing a table, so their columns are defined here, not in the script
    "bench_maml_history": BENCH_MAML_HISTORY,
    "bench_acdc_history": BENCH_ACDC_HISTORY,
    # scripts/bench_learning.py --csv: the default run, and its one-difference arms
    "bench_learning": _script_constant("bench_learning.py", "COLUMNS"),
    "bench_learning_differences": _script_constant("bench_learning.py", "COLUMNS"),
}
#: a run's per-task evaluation (`metaacdc evaluate`, named by evaluation_csv_name), kept
#: beside the run's metrics so that `metaacdc report` can be rerun on the committed copy
EVALUATION = re.compile(r"(train|val|test)-.+-\d+tasks-\d+steps")
EVALUATION_COLUMNS = ("task", "accuracy", "checkpoint_step")


def _columns_written(path: Path) -> tuple[str, ...] | None:
    """The columns of the command that writes ``path``; None for a table of unknown origin."""
    if path.stem in TABLE_KINDS:
        return TABLE_KINDS[path.stem]
    if path.suffix == ".csv" and EVALUATION.fullmatch(path.stem):
        return EVALUATION_COLUMNS
    return None


TABLES = sorted(
    p
    for p in (REPO / "docs").glob("**/*")
    if p.suffix in (".csv", ".md") and _columns_written(p) is not None
)


def test_docs_commit_the_model_table() -> None:
    assert (REPO / "docs" / "model_table.md") in TABLES
    assert (REPO / "docs" / "model_table.csv") in TABLES


@pytest.mark.parametrize("path", TABLES, ids=[str(p.relative_to(REPO)) for p in TABLES])
def test_committed_table_has_the_columns_its_command_writes(path: Path) -> None:
    expected = _columns_written(path)
    if path.suffix == ".csv":
        assert tuple(pd.read_csv(path).columns) == expected
    else:
        assert _markdown_header(path) == expected


def test_docs_hold_no_table_of_unknown_origin() -> None:
    unknown = [p for p in (REPO / "docs").glob("**/*.csv") if _columns_written(p) is None]
    assert not unknown, f"tables whose writing command the tests do not know: {unknown}"


SCRIPT = REPO / "scripts" / "reproduce_depth_curves.sh"


def _script(*args: str, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METAACDC": "metaacdc"}
    if dry_run:
        env["DRY_RUN"] = "1"
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO
    )


@pytest.mark.parametrize("args", [(), ("/no/such/miniimagenet",)])
def test_reproduce_script_without_data_prints_usage(args: tuple[str, ...]) -> None:
    result = _script(*args)
    assert result.returncode == 2 and "usage: scripts/reproduce_depth_curves.sh" in result.stderr
    assert result.stderr.splitlines()[0].startswith("reproduce_depth_curves.sh: error:")


def test_reproduce_script_commands_parse(tmp_path: Path) -> None:
    result = _script(str(tmp_path), str(tmp_path / "out"), "--device", "cuda:1", dry_run=True)
    assert result.returncode == 0, result.stderr
    commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert [c.split()[1:3] for c in commands] == [
        ["curve", "--config"],
        ["data", "prepare"],
        ["data", "prepare"],
        ["curve", "--config"],
    ]
    assert "--estimate" in commands[0] and "--episodes" in commands[-1]
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])
