"""CIFAR-FS and FC100 from a fake CIFAR-100 python archive: splits, pixels, determinism,
and one-line errors for wrong or incomplete inputs."""

from __future__ import annotations

import filecmp
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from metaacdc.data import EpisodeSampler, open_split, prepare
from metaacdc.data.sources.cifar100 import plan_splits
from metaacdc.data.sources.split_tables import read_split_table
from metaacdc.errors import ConfigError
from tests.data.benchmark_fakes import (
    CIFAR_TEST_PER_CLASS,
    CIFAR_TRAIN_PER_CLASS,
    cifar_content,
    cifar_names,
    write_cifar100_archive,
    write_cifar100_folder,
)

PER_CLASS = CIFAR_TRAIN_PER_CLASS + CIFAR_TEST_PER_CLASS
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar100_archive(tmp_path_factory.mktemp("cifar"))


def _prepare(source: str, root: Path, out: Path, **kw: object) -> list:
    return prepare(source, out, root=root, progress=False, **kw)


def test_cifar_fs_splits_from_the_archive(archive: Path, tmp_path: Path) -> None:
    results = _prepare("cifar-fs", archive, tmp_path)
    assert [(r.split, r.status) for r in results] == [(s, "written") for s in SPLITS]
    table = read_split_table("cifar_fs")
    for split, classes in zip(SPLITS, (64, 16, 20), strict=True):
        cache = open_split(tmp_path / split, image_size=32, channels=3)
        assert cache.class_names == sorted(r["class"] for r in table if r["split"] == split)
        assert cache.num_classes == classes
        assert np.bincount(cache.labels).tolist() == [PER_CLASS] * classes
        assert cache.meta.filenames is not None and cache.meta.filenames[0].startswith("train/")
        assert cache.meta.preprocessing["split_table"] == "resources/cifar_fs/split.csv"
    episode = EpisodeSampler(open_split(tmp_path / "test"), 5, 1, 2, seed=0).episode(0)
    assert episode.support_x.shape == (5, 3, 32, 32)


def test_fc100_splits_by_superclass(archive: Path, tmp_path: Path) -> None:
    _prepare("fc100", archive, tmp_path)
    _, _, superclass = cifar_names()
    table = read_split_table("fc100")
    for split, classes in zip(SPLITS, (60, 20, 20), strict=True):
        cache = open_split(tmp_path / split)
        expected = {r["superclass"] for r in table if r["split"] == split}
        assert cache.num_classes == classes
        assert {superclass[name] for name in cache.class_names} == expected
        assert np.bincount(cache.labels).tolist() == [PER_CLASS] * classes


def test_pixels_are_the_archive_rows_in_class_then_file_order(archive: Path) -> None:
    plan = plan_splits("cifar-fs", archive, ["val"])[0]
    train, test = cifar_content("train"), cifar_content("test")
    fine_names = cifar_names()[0]
    first = fine_names.index(plan.class_names[0])
    rows = [i for i, f in enumerate(train["fine_labels"]) if f == first]
    image, _ = plan.read(0)
    assert np.array_equal(image, train["data"][rows[0]].reshape(3, 32, 32).transpose(1, 2, 0))
    last, _ = plan.read(PER_CLASS - 1)  # the class's image from the archive's test file
    test_row = test["fine_labels"].index(first)
    assert np.array_equal(last, test["data"][test_row].reshape(3, 32, 32).transpose(1, 2, 0))
    assert plan.filenames is not None and plan.filenames[PER_CLASS - 1].startswith("test/")
    small = plan_splits("cifar-fs", archive, ["val"], image_size=16)[0]
    assert small.read(0)[0].shape == (16, 16, 3)


def test_archive_folder_and_holder_give_byte_identical_caches(
    archive: Path, tmp_path: Path
) -> None:
    folder = write_cifar100_folder(tmp_path / "extracted")
    holder = tmp_path / "downloads"
    holder.mkdir()
    shutil.copy(archive, holder)
    roots = {"archive": archive, "folder": folder, "holder": holder, "again": archive}
    for name, root in roots.items():
        _prepare("fc100", root, tmp_path / name, splits=["val"])
    reference = tmp_path / "archive" / "val"
    for name in ("folder", "holder", "again"):
        other = tmp_path / name / "val"
        _, mismatch, errors = filecmp.cmpfiles(
            reference, other, ["images.u8", "labels.npy", "meta.json"], shallow=False
        )
        assert mismatch == [] and errors == [], name
    assert _prepare("fc100", folder, tmp_path / "archive", splits=["val"])[0].status == "kept"


def test_missing_or_wrong_inputs_are_one_line_errors(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        plan_splits("cifar-fs", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no CIFAR-100 python data found.*cifar-100-python"):
        plan_splits("cifar-fs", tmp_path / "empty")
    folder = write_cifar100_folder(tmp_path / "partial")
    (folder / "test").unlink()
    with pytest.raises(ConfigError, match=r"incomplete CIFAR-100 data.*meta, train.*test"):
        plan_splits("fc100", tmp_path / "partial")
    (tmp_path / "not-an-archive.txt").write_text("x")
    with pytest.raises(ConfigError, match="neither a folder nor an archive"):
        plan_splits("cifar-fs", tmp_path / "not-an-archive.txt")
    truncated = tmp_path / "cut" / "cifar-100-python.tar.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(ConfigError, match=re.escape(str(truncated))) as error:
        plan_splits("cifar-fs", truncated)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("member", "value", "message"),
    [
        ("meta", {"label_names": ["cat"]}, r"meta: not CIFAR-100 meta: missing fine_label_names"),
        (
            "meta",
            {"fine_label_names": ["a"] * 10, "coarse_label_names": ["b"] * 20},
            r"10 classes and 20 superclasses, CIFAR-100 has 100 and 20",
        ),
        ("train", {"data": np.zeros((2, 3072), np.uint8)}, r"train: not a CIFAR-100 data file"),
        ("test", [1, 2, 3], r"test: expected a dict, found list"),
        ("train", b"\x00\x01 not a pickle", r"train: not a readable pickle"),
    ],
)
def test_malformed_archive_files_are_named(
    tmp_path: Path, member: str, value: object, message: str
) -> None:
    root = write_cifar100_archive(tmp_path, {member: value})
    with pytest.raises(ConfigError, match=message) as error:
        plan_splits("cifar-fs", root)
    assert "\n" not in str(error.value)


def test_labels_out_of_range_and_foreign_classes_are_refused(tmp_path: Path) -> None:
    bad = cifar_content("test")
    bad["fine_labels"] = [100, *bad["fine_labels"][1:]]
    with pytest.raises(ConfigError, match=r"test: fine_labels outside 0\.\.99"):
        plan_splits("cifar-fs", write_cifar100_folder(tmp_path / "a", {"test": bad}))
    fine_names, coarse_names, _ = cifar_names()
    renamed = {
        "fine_label_names": ["x" + n for n in fine_names],
        "coarse_label_names": coarse_names,
    }
    root = write_cifar100_folder(tmp_path / "b", {"meta": pickle.dumps(renamed, protocol=2)})
    with pytest.raises(ConfigError, match=r"class 'xapple'|of the CIFAR-FS split is not a class"):
        plan_splits("cifar-fs", root)
    shuffled = {"fine_label_names": fine_names, "coarse_label_names": coarse_names[::-1]}
    root = write_cifar100_folder(tmp_path / "c", {"meta": shuffled})
    with pytest.raises(ConfigError, match=r"superclass \d+ is '.+', the FC100 table expects"):
        plan_splits("fc100", root)
    missing = cifar_content("train")
    keep = [i for i, c in enumerate(missing["coarse_labels"]) if c != 0]
    for key in ("fine_labels", "coarse_labels", "filenames"):
        missing[key] = [missing[key][i] for i in keep]
    missing["data"] = missing["data"][keep]
    test = cifar_content("test")
    keep = [i for i, c in enumerate(test["coarse_labels"]) if c != 0]
    for key in ("fine_labels", "coarse_labels", "filenames"):
        test[key] = [test[key][i] for i in keep]
    test["data"] = test["data"][keep]
    root = write_cifar100_folder(tmp_path / "d", {"train": missing, "test": test})
    with pytest.raises(ConfigError, match=r"FC100 test superclasses hold 15 classes here"):
        plan_splits("fc100", root, ["test"])
    with pytest.raises(ConfigError, match=r"class 'beaver' has no images"):
        plan_splits("cifar-fs", root, ["val"])
