"""The shipped split tables of CIFAR-FS, FC100, CUB and tieredImageNet, and the benchmarks'
registration in ``prepare``, the config and ``metaacdc data prepare``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from metaacdc.cli import main
from metaacdc.cli.data import SOURCE_OPTIONS
from metaacdc.config import DATASETS
from metaacdc.data import SOURCES, open_split
from metaacdc.data.sources.benchmarks import DEFAULT_IMAGE_SIZES, OPTIONS
from metaacdc.data.sources.split_tables import read_split_table, split_table_path
from tests.data.benchmark_fakes import write_cifar100_archive

SPLITS = ("train", "val", "test")


@pytest.mark.parametrize(
    ("table", "column", "counts"),
    [
        ("cifar_fs", "class", (64, 16, 20)),
        ("fc100", "superclass", (12, 4, 4)),
        ("cub", "class", (100, 50, 50)),
        ("tieredimagenet", "wnid", (351, 97, 160)),
    ],
)
def test_tables_have_the_standard_counts_provenance_and_no_overlap(
    table: str, column: str, counts: tuple[int, int, int]
) -> None:
    rows = read_split_table(table)
    per_split = Counter(row["split"] for row in rows)
    assert tuple(per_split[s] for s in SPLITS) == counts
    values = [row[column] for row in rows]
    assert len(set(values)) == len(values), "a class in two splits, or listed twice"
    lines = split_table_path(table).read_text().splitlines()
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert "github.com/" in header and "commit" in header


def test_tables_agree_with_each_other_and_the_published_rules() -> None:
    cifar = read_split_table("cifar_fs")
    superclasses = Counter(row["superclass"] for row in cifar)
    assert len(superclasses) == 20 and set(superclasses.values()) == {5}  # CIFAR-100's shape
    fc100 = read_split_table("fc100")
    assert {row["superclass"] for row in fc100} == set(superclasses)
    assert sorted(superclasses) == [
        row["superclass"] for row in sorted(fc100, key=lambda r: int(r["superclass_index"]))
    ]  # coarse_label_names is alphabetical, so the TADAM indices name these superclasses
    cub = read_split_table("cub")
    names = sorted(row["class"] for row in cub)
    assert names[0] == "001.Black_footed_Albatross" and names[-1] == "200.Common_Yellowthroat"
    rule = {name: ("train", "val", "train", "test")[i % 4] for i, name in enumerate(names)}
    assert all(rule[row["class"]] == row["split"] for row in cub)  # CloserLook's i%2, i%4 rule
    tiered = read_split_table("tieredimagenet")
    categories = {s: {r["category"] for r in tiered if r["split"] == s} for s in SPLITS}
    assert [len(categories[s]) for s in SPLITS] == [20, 6, 8]
    assert not (categories["train"] & categories["val"] or categories["val"] & categories["test"])


def test_every_source_is_registered_everywhere() -> None:
    assert set(DEFAULT_IMAGE_SIZES) <= set(SOURCES)
    assert tuple(SOURCE_OPTIONS) == SOURCES
    assert set(SOURCES) == set(DATASETS)
    assert DEFAULT_IMAGE_SIZES == {"cifar-fs": 32, "fc100": 32, "cub": 84, "tieredimagenet": 84}
    assert all(SOURCE_OPTIONS[source] == OPTIONS[source] for source in DEFAULT_IMAGE_SIZES)


def test_cli_prepares_cifar_fs_from_the_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = write_cifar100_archive(tmp_path / "downloads")
    base = ["data", "prepare", "--out", str(tmp_path / "cache"), "--no-progress"]
    argv = [*base, "--source", "cifar-fs", "--root", str(archive), "--splits", "test"]
    assert main(argv) == 0
    assert "test: written" in capsys.readouterr().out
    cache = open_split(tmp_path / "cache" / "test", image_size=32)
    assert cache.num_classes == 20
    assert main([*argv, "--layout", "pickle"]) == 2
    err = capsys.readouterr().err
    assert "--layout applies to --source miniimagenet or tieredimagenet only" in err
    assert err.count("\n") == 1
    assert main([*base, "--source", "cub", "--root", str(tmp_path / "downloads")]) == 2
    err = capsys.readouterr().err
    assert "no CUB-200-2011 images found" in err and err.count("\n") == 1
    tiered = [*base, "--source", "tieredimagenet", "--root", str(tmp_path), "--layout", "csv"]
    assert main(tiered) == 2
    assert "layout='csv' is not valid" in capsys.readouterr().err
