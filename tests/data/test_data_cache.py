"""Cache format: atomic completion, resume, refusal to overwrite (saying what differs),
version and size checks, and contents checked against their recorded checksums."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import metaacdc.data.integrity as integrity
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


def _change_in_place(path: Path, offset: int = 100) -> None:
    """Flip one byte of ``path`` in place (same size, same inode), as a bad disk or a stray
    write would; the modification time is moved on explicitly, since the kernel's file
    clock may not tick between the prepare and this write."""
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0xFF]))
    status = path.stat()
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize("name", ["images.u8", "labels.npy"])
def test_contents_changed_in_place_are_refused_naming_the_file(tmp_path: Path, name: str) -> None:
    _synthetic(tmp_path, splits=["val"])
    open_split(tmp_path / "val")  # fine, and stamped as checked
    _change_in_place(tmp_path / "val" / name, offset=200)
    with pytest.raises(ConfigError) as refused:
        open_split(tmp_path / "val")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'val' / name}: changed or damaged since the cache")
    assert (
        f"`metaacdc data prepare --source synthetic --out {tmp_path} --splits val --force`"
        in message
    )
    assert "\n" not in message


def test_files_are_hashed_once_until_they_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _synthetic(tmp_path, splits=["val"])
    hashed: list[str] = []
    original = integrity.file_sha256
    monkeypatch.setattr(
        integrity, "file_sha256", lambda path: hashed.append(path.name) or original(path)
    )
    open_split(tmp_path / "val")
    assert hashed == [], "prepare stamped the files it had just hashed"
    (tmp_path / "val" / ".verified.json").unlink()
    open_split(tmp_path / "val")
    open_split(tmp_path / "val")
    assert hashed == ["images.u8", "labels.npy"], "hashed at the first open only"
    open_split(tmp_path / "val", verify="always")
    assert hashed[2:] == ["images.u8", "labels.npy"]
    shutil.copytree(tmp_path / "val", tmp_path / "copy" / "val")  # other inodes
    open_split(tmp_path / "copy" / "val")
    assert hashed[4:] == ["images.u8", "labels.npy"]
    open_split(tmp_path / "val", verify="never")
    assert len(hashed) == 6


def test_a_read_only_cache_is_checked_at_every_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _synthetic(tmp_path, splits=["val"])
    split = tmp_path / "val"
    (split / ".verified.json").unlink()
    monkeypatch.setattr(integrity, "write_stamp", lambda *args: None)  # as if read-only
    assert open_split(split).image_size == 12
    assert not (split / ".verified.json").exists()
    _change_in_place(split / "images.u8")
    with pytest.raises(ConfigError, match="changed or damaged"):
        open_split(split)


def test_a_stamp_for_other_files_is_not_trusted(tmp_path: Path) -> None:
    _synthetic(tmp_path / "a", splits=["val"])
    _synthetic(tmp_path / "b", splits=["val"], seed=6)
    damaged = tmp_path / "b" / "val"
    _change_in_place(damaged / "images.u8")
    shutil.copy2(tmp_path / "a" / "val" / ".verified.json", damaged / ".verified.json")
    with pytest.raises(ConfigError, match="changed or damaged"):
        open_split(damaged)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: {**meta, "mean": [0.9, 0.9, 0.9]}, "its content does not match"),
        (lambda meta: {**meta, "num_images": "many"}, r"malformed cache metadata \(num_images"),
        (lambda meta: {**meta, "class_names": [1, 2]}, r"malformed.*\(class_names is \[1, 2\]"),
        (lambda meta: {**meta, "colour": "blue"}, "malformed cache metadata"),
        (lambda meta: [meta], r"damaged cache metadata \(not a JSON object\)"),
    ],
    ids=["edited value", "wrong type", "wrong item type", "unknown field", "not an object"],
)
def test_edited_or_malformed_metadata_is_refused(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    _synthetic(tmp_path, splits=["val"])
    meta_path = tmp_path / "val" / "meta.json"
    meta_path.write_text(json.dumps(edit(json.loads(meta_path.read_text()))))
    with pytest.raises(ConfigError, match=rf"meta\.json: .*{message}"):
        open_split(tmp_path / "val")


def test_metadata_of_older_caches_without_the_new_checksums_is_read(tmp_path: Path) -> None:
    _synthetic(tmp_path, splits=["val"])
    meta_path = tmp_path / "val" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["labels_sha256"], meta["meta_sha256"]
    meta_path.write_text(json.dumps(meta))
    assert open_split(tmp_path / "val").meta.labels_sha256 == ""
    _change_in_place(tmp_path / "val" / "images.u8")
    with pytest.raises(ConfigError, match=r"images\.u8: changed or damaged"):
        open_split(tmp_path / "val")


def test_missing_labels_are_refused(tmp_path: Path) -> None:
    _synthetic(tmp_path, splits=["val"])
    (tmp_path / "val" / "labels.npy").unlink()
    with pytest.raises(ConfigError, match=r"labels\.npy: missing; the cache is damaged"):
        open_split(tmp_path / "val")


def test_a_different_cache_is_refused_saying_what_differs_and_writing_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "cache"
    _synthetic(out, splits=["test"])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError) as refused:
        _synthetic(out, splits=["test"], seed=9)  # the same sizes and counts: only the seed
    assert "holds a different cache than the one asked for (generator.seed 5 here, 9 asked " in (
        str(refused.value)
    )
    with pytest.raises(ConfigError, match=r"\(image size 12 here, 16 asked for; "):
        _synthetic(out, size=16, splits=["test"])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_preparing_again_repairs_a_damaged_split_and_keeps_intact_ones(tmp_path: Path) -> None:
    _synthetic(tmp_path, splits=["val", "test"])
    _change_in_place(tmp_path / "val" / "images.u8")
    results = _synthetic(tmp_path, splits=["val", "test"])  # what the refusal says to run
    assert [r.status for r in results] == ["repaired", "kept"]
    assert open_split(tmp_path / "val").image_size == 12
    (tmp_path / "test" / "meta.json").write_text("{")
    with pytest.raises(ConfigError, match=r"unreadable cache metadata.*--force"):
        _synthetic(tmp_path, splits=["test"])
    assert _synthetic(tmp_path, splits=["test"], force=True)[0].status == "repaired"
    assert open_split(tmp_path / "test").image_size == 12
