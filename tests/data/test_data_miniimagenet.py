"""miniImageNet layouts on a tiny fake dataset, and every bad-input error naming the file."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from metaacdc.data import open_split, prepare
from metaacdc.data.sources.miniimagenet import detect_layout, plan_split
from metaacdc.errors import ConfigError
from tests.data.data_fakes import (
    IMAGES_PER_CLASS,
    SPLIT_CLASSES,
    fake_rows,
    write_fake_miniimagenet,
)

SIZE = 16


def _prepare(root: Path, out: Path, **kw: object) -> list:
    return prepare("miniimagenet", out, root=root, image_size=SIZE, progress=False, **kw)


@pytest.mark.parametrize("layout", ["csv", "pickle", "folders"])
def test_each_layout_is_detected_and_cached(tmp_path: Path, layout: str) -> None:
    root = write_fake_miniimagenet(tmp_path / layout, layout)
    assert detect_layout(root) == layout
    results = _prepare(root, tmp_path / "cache")
    assert [r.status for r in results] == ["written"] * 3
    for split, classes in SPLIT_CLASSES.items():
        cache = open_split(tmp_path / "cache" / split, image_size=SIZE)
        assert cache.images.shape == (classes * IMAGES_PER_CLASS, SIZE, SIZE, 3)
        assert cache.class_names == sorted({label for _, label in fake_rows(split)})
        assert cache.meta.filenames == [name for name, _ in sorted(fake_rows(split))]
        assert cache.meta.preprocessing["layout"] == layout
        assert np.bincount(cache.labels).tolist() == [IMAGES_PER_CLASS] * classes


def test_all_layouts_give_identical_caches(tmp_path: Path) -> None:
    caches = {}
    for layout in ("csv", "pickle", "folders"):
        root = write_fake_miniimagenet(tmp_path / layout, layout)
        _prepare(root, tmp_path / f"cache-{layout}")
        caches[layout] = tmp_path / f"cache-{layout}"
    for split in SPLIT_CLASSES:
        opened = [open_split(c / split) for c in caches.values()]
        reference = opened[0]
        for other in opened[1:]:
            assert (reference.images.tobytes()) == other.images.tobytes()
            assert np.array_equal(reference.labels, other.labels)
            assert reference.meta.images_sha256 == other.meta.images_sha256
            assert reference.class_names == other.class_names
            assert reference.meta.filenames == other.meta.filenames
            assert reference.meta.mean == other.meta.mean


def test_missing_root_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        _prepare(tmp_path / "nowhere", tmp_path / "cache")


def test_unrecognised_folder_lists_accepted_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no miniImageNet layout found.*images/"):
        detect_layout(tmp_path / "empty")


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    root = write_fake_miniimagenet(tmp_path / "mini", "folders")
    for path in sorted((root / "val").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "val").rmdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "val"))):
        plan_split(root, "val", SIZE)


def test_csv_row_with_missing_image_names_row_and_file(fake_mini: Path, tmp_path: Path) -> None:
    victim = fake_rows("train")[3][0]
    (fake_mini / "images" / victim).unlink()
    with pytest.raises(FileNotFoundError, match=rf"train\.csv: line 5 names {victim}"):
        _prepare(fake_mini, tmp_path / "cache")
    assert not (tmp_path / "cache" / "train").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_bad_image_is_named(fake_mini: Path, tmp_path: Path, damage: str) -> None:
    victim = fake_mini / "images" / fake_rows("val")[2][0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an image")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(victim))}: unreadable or truncated"):
        _prepare(fake_mini, tmp_path / "cache")
    assert not (tmp_path / "cache" / "val").exists()


def test_malformed_split_csv_is_named(fake_mini: Path) -> None:
    (fake_mini / "test.csv").write_text("file,class\na.jpg,n1\n")
    with pytest.raises(ConfigError, match=r"test\.csv: expected the header"):
        plan_split(fake_mini, "test", SIZE)


def test_bad_pickle_is_named(tmp_path: Path) -> None:
    root = tmp_path / "pkl"
    root.mkdir()
    path = root / "mini-imagenet-cache-train.pkl"
    path.write_bytes(pickle.dumps({"images": [1, 2]}))
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        plan_split(root, "train", SIZE)


def test_pickle_without_matching_csv_has_no_filenames(tmp_path: Path) -> None:
    root = write_fake_miniimagenet(tmp_path / "pkl", "pickle")
    for split in SPLIT_CLASSES:
        (root / f"{split}.csv").unlink()  # the shipped CSVs list other classes
    plan = plan_split(root, "test", SIZE)
    assert plan.filenames is None
    assert plan.preprocessing["filenames"] == "unknown"


def test_shipped_csvs_match_shared_copies_and_source_md(shared_dir: Path) -> None:
    from metaacdc.data import shipped_split_csv

    source_md = (shipped_split_csv("train").parent / "SOURCE.md").read_text()
    assert source_md == (shared_dir / "data/miniimagenet/splits/SOURCE.md").read_text()
    for split in ("train", "val", "test"):
        shipped = shipped_split_csv(split).read_bytes()
        assert shipped == (shared_dir / f"data/miniimagenet/splits/{split}.csv").read_bytes()
        assert f"{split} {hashlib.sha256(shipped).hexdigest()}" in source_md


def test_learn2learn_validation_pickle_name_is_accepted(tmp_path: Path) -> None:
    root = write_fake_miniimagenet(tmp_path / "pkl", "pickle")
    (root / "mini-imagenet-cache-val.pkl").rename(root / "mini-imagenet-cache-validation.pkl")
    plan = plan_split(root, "val", SIZE)
    assert len(plan) == SPLIT_CLASSES["val"] * IMAGES_PER_CLASS
