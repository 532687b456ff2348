"""Omniglot from the real 5-alphabet zips in ../shared/data/omniglot."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metaacdc.data import EpisodeSampler, open_split, prepare
from metaacdc.data.sources.omniglot import plan_splits, split_characters
from metaacdc.errors import ConfigError

# 136 + 156 characters in the two zips; Greek and Latin (50 characters) are in both
UNIQUE_CHARACTERS = 242


@pytest.fixture(scope="module")
def omniglot_root(shared_dir: Path) -> Path:
    return shared_dir / "data" / "omniglot"


@pytest.fixture(scope="module")
def omniglot_cache(omniglot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("omniglot")
    prepare("omniglot", out, root=omniglot_root, progress=False)
    return out


def test_cache_from_real_zips(omniglot_cache: Path) -> None:
    splits = {
        s: open_split(omniglot_cache / s, image_size=28, channels=1)
        for s in ("train", "val", "test")
    }
    assert sum(s.num_classes for s in splits.values()) == UNIQUE_CHARACTERS
    assert [s.num_classes for s in splits.values()] == [164, 15, 63]
    names = [set(s.class_names) for s in splits.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    train = splits["train"]
    assert all(len(ix) == 20 for ix in train.class_indices)
    assert train.meta.preprocessing["inverted"] is True
    assert train.meta.mean[0] < 0.3  # inverted: mostly dark background, bright strokes
    assert np.median(train.images) == 0 and train.images.max() == 255
    assert set(train.meta.preprocessing["inputs"]) == {
        "images_background_small1",
        "images_background_small2",
    }
    episode = EpisodeSampler(train, ways=20, shots=5, queries=15, seed=0).episode(0)
    assert episode.support_x.shape == (100, 1, 28, 28)


def test_rotations_add_classes_in_the_same_split(omniglot_root: Path) -> None:
    plain = plan_splits(omniglot_root, ["val"], image_size=16)[0]
    rotated = plan_splits(omniglot_root, ["val"], image_size=16, rotations=True)[0]
    assert len(rotated.class_names) == 4 * len(plain.class_names)
    assert rotated.class_names[1].endswith("/rot090")
    image, _ = rotated.read(20)  # first image of the 90-degree class
    upright, _ = rotated.read(0)
    assert np.array_equal(image[:, :, 0], np.rot90(upright[:, :, 0]))


def test_character_split_is_seeded_and_standard_sized() -> None:
    characters = [f"a/c{i:04d}" for i in range(1623)]
    first, again = split_characters(characters, 0), split_characters(characters, 0)
    assert first == again
    assert [len(first[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert split_characters(characters, 1)["test"] != first["test"]


def test_extracted_folders_equal_zips(omniglot_root: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(omniglot_root / "images_background_small1.zip") as archive:
        archive.extractall(tmp_path)
    from_folder = plan_splits(tmp_path, ["val"], image_size=12)[0]
    shutil.copy(omniglot_root / "images_background_small1.zip", tmp_path / "z")
    only_zip = tmp_path / "zipped"
    only_zip.mkdir()
    (tmp_path / "z").rename(only_zip / "images_background_small1.zip")
    from_zip = plan_splits(only_zip, ["val"], image_size=12)[0]
    assert from_folder.class_names == from_zip.class_names
    assert np.array_equal(from_folder.read(3)[0], from_zip.read(3)[0])


def test_missing_and_empty_roots_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere: Omniglot source not found"):
        plan_splits(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"no Omniglot drawings \(<Alphabet>/characterNN"):
        plan_splits(tmp_path)
    (tmp_path / "images_background.zip").write_bytes(b"PK broken")
    with pytest.raises(ConfigError, match=r"images_background\.zip: not a readable zip"):
        plan_splits(tmp_path)
