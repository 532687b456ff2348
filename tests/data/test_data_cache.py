"""Cache format: atomic completion, resume, refusal to overwrite, version and size checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metaacdc.data import FORMAT_VERSION, is_complete, open_split, prepare
from metaacdc.data.prepare_cache import plan_splits
from metaacdc.errors import ConfigError

SYN = {"images_per_class": 3, "seed": 5}


def _synthetic(out: Path, size: int = 12, **kw: object) -> list:
    return prepare("synthetic", out, image_size=size, progress=False, **{**SYN, **kw})


def test_written_cache_matches_meta_and_is_memory_mapped(tmp_path: Path) -> None:
    _synthetic(tmp_path, splits=["val"])
    cache = open_split(tmp_path / "val")
    assert isinstance(cache.images, np.memmap) and not cache.images.flags.writeable
    assert cache.images.shape == (16 * 3, 12, 12, 3)
    meta = json.loads((tmp_path / "val" / "meta.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["image_size"] == 12 and meta["channels"] == 3
    assert len(meta["mean"]) == 3 and all(0 < s < 1 for s in meta["std"])
    pixels = np.asarray(cache.images, dtype=np.float64) / 255
    assert np.allclose(meta["mean"], pixels.mean(axis=(0, 1, 2)))
    assert meta["preprocessing"]["generator"]["seed"] == 5


def test_second_prepare_keeps_complete_splits(tmp_path: Path) -> None:
    first = _synthetic(tmp_path)
    stamp = (tmp_path / "train" / "meta.json").stat().st_mtime_ns
    second = _synthetic(tmp_path)
    assert [r.status for r in first] == ["written"] * 3
    assert [r.status for r in second] == ["kept"] * 3
    assert (tmp_path / "train" / "meta.json").stat().st_mtime_ns == stamp


def test_different_cache_is_refused_without_force(tmp_path: Path) -> None:
    _synthetic(tmp_path, splits=["test"])
    with pytest.raises(ConfigError, match=r"test: holds a different cache.*--force"):
        _synthetic(tmp_path, size=16, splits=["test"])
    assert open_split(tmp_path / "test").image_size == 12
    results = _synthetic(tmp_path, size=16, splits=["test"], force=True)
    assert results[0].status == "written"
    assert open_split(tmp_path / "test").image_size == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test"]


def test_interrupted_prepare_leaves_nothing_complete(tmp_path: Path, monkeypatch) -> None:
    plans = plan_splits("synthetic", None, 12, ["train"], **SYN)
    original = plans[0].read

    def interrupted(i: int) -> tuple:
        if i == 50:
            raise KeyboardInterrupt
        return original(i)

    plans[0].read = interrupted
    monkeypatch.setattr("metaacdc.data.prepare_cache.plan_splits", lambda *a, **k: plans)
    with pytest.raises(KeyboardInterrupt):
        _synthetic(tmp_path, splits=["train"])
    assert not is_complete(tmp_path / "train")
    assert list(tmp_path.iterdir()) == []  # the temporary directory was removed
    monkeypatch.undo()
    assert _synthetic(tmp_path, splits=["train"])[0].status == "written"


def test_leftover_temporary_is_not_a_cache(tmp_path: Path) -> None:
    leftover = tmp_path / ".train.tmp-999"
    leftover.mkdir(parents=True)
    (leftover / "images.u8").write_bytes(b"\0" * 10)
    with pytest.raises(ConfigError, match="incomplete cache"):
        open_split(leftover)
    _synthetic(tmp_path, splits=["train"])
    assert not leftover.exists()


def test_split_without_meta_is_reported_incomplete(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "images.u8").write_bytes(b"\0" * 10)
    with pytest.raises(ConfigError, match=r"train: incomplete cache \(no meta.json\)"):
        open_split(tmp_path / "train")


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    _synthetic(tmp_path, splits=["val"])
    meta_path = tmp_path / "val" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        ConfigError, match=rf"meta\.json: cache format version {FORMAT_VERSION + 1}"
    ):
        open_split(tmp_path / "val")


def test_other_image_size_is_refused(tmp_path: Path) -> None:
    _synthetic(tmp_path, splits=["val"])
    with pytest.raises(ConfigError, match=r"meta\.json: cache holds 12px images, 84px"):
        open_split(tmp_path / "val", image_size=84)


def test_truncated_pixel_file_is_refused(tmp_path: Path) -> None:
    _synthetic(tmp_path, splits=["val"])
    images = tmp_path / "val" / "images.u8"
    images.write_bytes(images.read_bytes()[:-7])
    with pytest.raises(ConfigError, match=r"images\.u8: expected 20736 bytes.*found 20729"):
        open_split(tmp_path / "val")


def test_missing_cache_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope: no such cache directory"):
        open_split(tmp_path / "nope")


def test_unknown_source_and_missing_root_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="source='imagenet' is not valid"):
        prepare("imagenet", tmp_path)
    with pytest.raises(ConfigError, match="--root is required"):
        prepare("omniglot", tmp_path)
