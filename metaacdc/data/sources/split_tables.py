"""The standard class splits shipped as ``metaacdc/resources/<dataset>/split.csv``.

Each table is a CSV whose leading ``#`` lines say where its rows come from (paper, public
repository, commit, file); the first other line is the header and it always has a ``split``
column (``train``, ``val`` or ``test``). Tables hold class names only, never images.
"""

from __future__ import annotations

import csv
import hashlib
from importlib import resources
from pathlib import Path

from metaacdc.errors import ConfigError, check_choice

SPLITS = ("train", "val", "test")


def split_table_path(dataset: str) -> Path:
    """Path of the split table shipped for ``dataset`` (``cifar_fs``, ``fc100``, ...)."""
    return Path(str(resources.files("metaacdc") / "resources" / dataset / "split.csv"))


def read_split_table(dataset: str) -> list[dict[str, str]]:
    """Rows of a shipped split table as dicts keyed by its header, comments skipped."""
    path = split_table_path(dataset)
    with open(path, newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    for number, row in enumerate(rows, start=2):
        if row.get("split") not in SPLITS or any(value is None for value in row.values()):
            raise ConfigError(f"{path}: malformed row {number} after the comments: {row!r}")
    return rows


def column_by_split(dataset: str, split: str, column: str) -> list[str]:
    """Values of ``column`` in the rows of ``split``, in table order."""
    check_choice("split", split, SPLITS)
    return [row[column] for row in read_split_table(dataset) if row["split"] == split]


def table_sha256(dataset: str) -> str:
    """sha256 of the shipped table file (recorded in the cache's preprocessing)."""
    return hashlib.sha256(split_table_path(dataset).read_bytes()).hexdigest()
