"""CUB-200-2011 from a fake archive and folder: CloserLook's class split, determinism, and
one-line errors for a wrong or incomplete layout."""

from __future__ import annotations

import filecmp
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from metaacdc.data import open_split, prepare
from metaacdc.data.sources.cub import plan_splits
from metaacdc.data.sources.split_tables import read_split_table
from metaacdc.errors import ConfigError
from tests.data.benchmark_fakes import CUB_PER_CLASS, write_cub_archive, write_cub_folder

SIZE = 8
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def cub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cub")
    archive = write_cub_archive(root / "downloads")
    return {"archive": archive, "folder": root / "downloads" / "unpacked" / "CUB_200_2011"}


def _prepare(root: Path, out: Path, **kw: object) -> list:
    return prepare("cub", out, root=root, image_size=SIZE, progress=False, **kw)


def test_closerlook_split_from_the_archive(cub: dict[str, Path], tmp_path: Path) -> None:
    _prepare(cub["archive"], tmp_path)
    names = sorted(r["class"] for r in read_split_table("cub"))
    rule = {"train": names[0::2], "val": names[1::4], "test": names[3::4]}
    for split, classes in zip(SPLITS, (100, 50, 50), strict=True):
        cache = open_split(tmp_path / split, image_size=SIZE, channels=3)
        assert cache.class_names == rule[split] and cache.num_classes == classes
        assert np.bincount(cache.labels).tolist() == [CUB_PER_CLASS] * classes
        assert cache.meta.filenames is not None
        assert cache.meta.filenames[0].startswith(f"{rule[split][0]}/")
        assert not any("._" in name for name in cache.meta.filenames)  # macOS metadata skipped
    first = open_split(tmp_path / "train")
    assert first.images[1].std(axis=-1).max() == 0  # the grayscale image, as RGB


def test_archive_folder_images_and_holder_give_byte_identical_caches(
    cub: dict[str, Path], tmp_path: Path
) -> None:
    holder = tmp_path / "holder"
    holder.mkdir()
    shutil.copy(cub["archive"], holder)
    roots = {
        "archive": cub["archive"],
        "folder": cub["folder"],
        "images": cub["folder"] / "images",
        "holder": holder,
    }
    for name, root in roots.items():
        _prepare(root, tmp_path / name, splits=["val"])
    for name in ("folder", "images", "holder"):
        _, mismatch, errors = filecmp.cmpfiles(
            tmp_path / "archive" / "val",
            tmp_path / name / "val",
            ["images.u8", "labels.npy", "meta.json"],
            shallow=False,
        )
        assert mismatch == [] and errors == [], name
    assert _prepare(cub["folder"], tmp_path / "archive", splits=["val"])[0].status == "kept"


def test_missing_or_empty_roots_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        plan_splits(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no CUB-200-2011 images found.*CUB_200_2011.tgz"):
        plan_splits(tmp_path / "empty")


def test_missing_extra_or_repeated_class_folders_are_refused(tmp_path: Path) -> None:
    names = [r["class"] for r in read_split_table("cub")]
    with pytest.raises(ConfigError, match=r"'201.Dodo' is not one of the 200 CUB-200-2011"):
        plan_splits(write_cub_folder(tmp_path / "extra", [*names[:3], "201.Dodo"]))
    with pytest.raises(ConfigError, match=r"197 of the 200 .* missing .*first: 004\."):
        plan_splits(write_cub_folder(tmp_path / "short", names[:3]))
    write_cub_folder(tmp_path / "twice" / "a", names[:1])
    write_cub_folder(tmp_path / "twice" / "b", names[:1])
    with pytest.raises(ConfigError, match=r"two sets of CUB images") as error:
        plan_splits(tmp_path / "twice")
    assert "\n" not in str(error.value)


def test_a_damaged_image_is_named(cub: dict[str, Path], tmp_path: Path) -> None:
    root = shutil.copytree(cub["folder"], tmp_path / "CUB_200_2011")
    names = sorted(r["class"] for r in read_split_table("cub"))
    victim = sorted((root / "images" / names[1]).glob("[!.]*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(ConfigError, match=re.escape(str(victim)) + ": unreadable or truncated"):
        _prepare(root, tmp_path / "cache", splits=["val"])
    assert not (tmp_path / "cache" / "val").exists()
