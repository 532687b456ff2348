"""tieredImageNet in its three layouts (fake: every class, one tiny image each): class counts,
class names, determinism, and one-line errors for a wrong or incomplete layout."""

from __future__ import annotations

import filecmp
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from metaacdc.data import open_split, prepare
from metaacdc.data.sources.tieredimagenet import detect_layout, plan_split
from metaacdc.errors import ConfigError
from tests.data.benchmark_fakes import (
    TIERED_PER_CLASS,
    tiered_pickles,
    tiered_wnids,
    write_tiered_folders,
    write_tiered_pickles,
)

SIZE = 8
COUNTS = {"train": 351, "val": 97, "test": 160}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiered_folders(tmp_path_factory.mktemp("tiered") / "folders")


def _prepare(root: Path, out: Path, **kw: object) -> list:
    return prepare("tieredimagenet", out, root=root, image_size=SIZE, progress=False, **kw)


def test_folders_layout_gives_the_standard_split(folders: Path, tmp_path: Path) -> None:
    assert detect_layout(folders) == "folders"
    _prepare(folders, tmp_path)
    for split, classes in COUNTS.items():
        cache = open_split(tmp_path / split, image_size=SIZE, channels=3)
        assert cache.class_names == sorted(tiered_wnids(split))
        assert cache.num_classes == classes
        assert np.bincount(cache.labels).tolist() == [TIERED_PER_CLASS] * classes
        assert cache.meta.preprocessing["layout"] == "folders"


def test_imagenet_layout_takes_the_tiered_classes_only(folders: Path, tmp_path: Path) -> None:
    imagenet = write_tiered_folders(tmp_path / "imagenet", layout="imagenet")
    assert detect_layout(imagenet) == "imagenet"
    plans = {s: plan_split(imagenet, s, SIZE) for s in COUNTS}
    assert {s: len(p.class_names) for s, p in plans.items()} == COUNTS
    every = [name for plan in plans.values() for name in plan.class_names]
    assert "n04592741" not in every  # an ImageNet class that is not in tieredImageNet
    same = plan_split(folders, "val", SIZE)
    assert plans["val"].read(3)[0].tobytes() == same.read(3)[0].tobytes()
    assert plans["val"].filenames == same.filenames


@pytest.mark.parametrize("names", ["wnid", "text", "none"])
def test_pickle_layout_and_its_class_names(tmp_path: Path, names: str) -> None:
    root = write_tiered_pickles(tmp_path / "tiered", names=names)
    assert detect_layout(root) == "pickle"
    plan = plan_split(root, "val", SIZE)
    assert len(plan.class_names) == COUNTS["val"] and plan.filenames is None
    if names == "none":
        assert plan.class_names[:2] == ["class000", "class001"]
    else:  # wnids given, or mapped from names through synsets.txt + class_names.txt
        assert plan.class_names == sorted(tiered_wnids("val"))
        assert plan.preprocessing["class_names_from"] == "wnid"
        # images follow their class: image 0 is the first image of the first wnid's class
        images, labels = tiered_pickles("val", names)
        given = [n.removeprefix("bird ") for n in labels["label_specific_str"]]
        k = list(labels["label_specific"]).index(given.index(plan.class_names[0]))
        image, raw = plan.read(0)
        assert raw == images[k].tobytes() and image.shape == (SIZE, SIZE, 3)


def test_pickle_cache_is_deterministic_and_found_by_its_other_names(tmp_path: Path) -> None:
    plain = write_tiered_pickles(tmp_path / "plain")
    zenodo = write_tiered_pickles(
        tmp_path / "zenodo" / "tiered-imagenet", prefix="tiered-imagenet-"
    )
    _prepare(plain, tmp_path / "a", splits=["test"])
    _prepare(plain, tmp_path / "b", splits=["test"])
    _prepare(zenodo.parent, tmp_path / "c", splits=["test"])
    for other in ("b", "c"):
        _, mismatch, errors = filecmp.cmpfiles(
            tmp_path / "a" / "test",
            tmp_path / other / "test",
            ["images.u8", "labels.npy"],
            shallow=False,
        )
        assert mismatch == [] and errors == [], other
    meta_a = (tmp_path / "a" / "test" / "meta.json").read_text()
    assert meta_a == (tmp_path / "b" / "test" / "meta.json").read_text()


def test_folders_with_a_class_of_another_split_or_missing_ones_are_refused(
    folders: Path, tmp_path: Path
) -> None:
    root = tmp_path / "tiered"
    shutil.copytree(folders / "val", root / "val")
    stray = tiered_wnids("train")[0]
    shutil.copytree(folders / "train" / stray, root / "val" / stray)
    with pytest.raises(ConfigError, match=rf"val/{stray}: a train class, not one of the 97"):
        plan_split(root, "val", SIZE)
    shutil.rmtree(root / "val" / stray)
    for wnid in tiered_wnids("val")[:2]:
        shutil.rmtree(root / "val" / wnid)
    with pytest.raises(ConfigError, match=r"2 of the 97 tieredImageNet val class folders"):
        plan_split(root, "val", SIZE)
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "test"))):
        plan_split(root, "test", SIZE)
    for wnid in tiered_wnids("val")[:2]:
        (root / "val" / wnid).mkdir()
    with pytest.raises(ConfigError, match="class folder holds no images"):
        plan_split(root, "val", SIZE, layout="folders")


def test_unrecognised_or_missing_roots_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tieredImageNet folder not found"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no tieredImageNet layout found.*_images_png\.pkl"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"layout='csv' is not valid"):
        plan_split(tmp_path / "empty", "val", SIZE, layout="csv")


def test_wrong_pickles_are_named(tmp_path: Path) -> None:
    images, labels = tiered_pickles("val")
    wrong_count = dict(labels, label_specific=labels["label_specific"] % 90)
    cases = {
        "val_labels.pkl": (pickle.dumps(wrong_count), r"90 classes, the tieredImageNet val"),
        "val_images_png.pkl": (pickle.dumps(images[:-1]), r"expected a list of 97 PNG"),
    }
    for name, (data, message) in cases.items():
        root = write_tiered_pickles(tmp_path / name, replace={name: data})
        with pytest.raises(ConfigError, match=rf"{re.escape(name)}.*{message}") as error:
            _prepare(root, tmp_path / f"out-{name}", splits=["val"])
        assert "\n" not in str(error.value)
    stray = tiered_wnids("train")[0]
    foreign = [stray, *labels["label_specific_str"][1:]]
    swapped = pickle.dumps(dict(labels, label_specific_str=foreign))
    root = write_tiered_pickles(tmp_path / "swapped", replace={"val_labels.pkl": swapped})
    with pytest.raises(ConfigError, match=rf"not the tieredImageNet val classes \(e\.g\. {stray}"):
        plan_split(root, "val", SIZE)
    (root / "val_images_png.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_images_png\.pkl: not found"):
        plan_split(root, "val", SIZE)


def test_names_without_wnids_are_kept_apart(tmp_path: Path) -> None:
    root = write_tiered_pickles(tmp_path / "tiered", names="text")
    (root / "synsets.txt").unlink()  # no way to map names to wnids: the names are kept
    plan = plan_split(root, "test", SIZE)
    assert plan.preprocessing["class_names_from"] == "label_specific_str"
    assert plan.class_names[0].startswith("bird n") and len(plan.class_names) == 160
    _, labels = tiered_pickles("test", "text")
    repeated = pickle.dumps(dict(labels, label_specific_str=["crane"] * 160))
    root = write_tiered_pickles(tmp_path / "cranes", replace={"test_labels.pkl": repeated})
    names = plan_split(root, "test", SIZE).class_names
    assert len(set(names)) == 160 and "crane" in names and "crane #2" in names
