"""Frozen episode manifests: checksums guard them, and they replay on any cache with the files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metaacdc.data import (
    CachedSplit,
    EpisodeSampler,
    ManifestSampler,
    class_files_from_csv,
    class_files_from_split,
    freeze,
    load_manifest,
    open_split,
    prepare,
    shipped_split_csv,
    synthetic_split,
)
from metaacdc.data.sources.miniimagenet import read_split_csv
from metaacdc.errors import ConfigError
from tests.data.data_fakes import fake_rows

EPISODES = Path(__file__).resolve().parents[2] / "episodes"
# Golden values: the content checksums of the shipped manifests were copied from the
# code's output (`metaacdc data freeze`) at commit d66d6bd (2026-11-22); their neighbour,
# test_frozen_manifest_tasks_are_valid_draws_of_the_test_csv, checks the tasks against the
# split CSV directly. TEST_CSV_SHA256 is not the code's: it is the upstream file's sha256,
# recorded in metaacdc/resources/miniimagenet/SOURCE.md.
FROZEN = {
    "miniimagenet-test-5w1s-15q.json": (
        1,
        "5eae5f557c1e8cab98e64cfc6361e69b982c50c887ea45f792d3dc8a26952c1f",
    ),
    "miniimagenet-test-5w5s-15q.json": (
        5,
        "330111a0740f1934c6640d039726a100b9a4d67a92be0c57369874a1d1c88a7a",
    ),
}
TEST_CSV_SHA256 = "2b7cfa78342995761a572a8158e539bc4e0a80f9bbd7d00c1e17a460fbbb93fa"


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_frozen_manifest_checksum_and_regeneration(name: str) -> None:
    shots, checksum = FROZEN[name]
    manifest = load_manifest(EPISODES / name)  # verifies the embedded checksum
    assert manifest.content_sha256() == checksum
    header = manifest.header
    assert (header["ways"], header["shots"], header["queries"]) == (5, shots, 15)
    assert header["num_tasks"] == len(manifest) == 3000
    assert header["source_sha256"] == TEST_CSV_SHA256
    assert manifest.support.shape == (3000, 5, shots) and manifest.query.shape == (3000, 5, 15)
    rows = read_split_csv(shipped_split_csv("test"))
    again = freeze(
        class_files_from_csv(rows),
        5,
        shots,
        15,
        3000,
        header["seed"],
        **{k: header[k] for k in ("command", "source", "source_sha256")},
    )
    assert again.content_sha256() == checksum


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_frozen_manifest_tasks_are_valid_draws_of_the_test_csv(name: str) -> None:
    """Independently of the code that froze them: every task has 5 distinct classes of the
    test CSV, each image listed under its task's class in the CSV, no image twice in a
    task (support and query apart); the header's source checksum is the CSV file's."""
    csv = shipped_split_csv("test")
    assert hashlib.sha256(csv.read_bytes()).hexdigest() == TEST_CSV_SHA256
    label_of = dict(read_split_csv(csv))
    manifest = load_manifest(EPISODES / name)
    assert sorted(manifest.classes) == sorted(set(label_of.values())) and len(label_of) == 12000
    classes = np.array(manifest.classes)[manifest.task_classes]  # (tasks, 5) names
    labels = np.array([label_of[f] for f in manifest.filenames])
    items = np.concatenate([manifest.support, manifest.query], axis=2)  # (tasks, 5, n)
    assert (np.sort(classes, axis=1)[:, 1:] != np.sort(classes, axis=1)[:, :-1]).all()
    assert (labels[items] == classes[:, :, None]).all()
    flat = np.sort(items.reshape(len(items), -1), axis=1)
    assert (flat[:, 1:] != flat[:, :-1]).all()


def test_edited_manifest_is_refused(tmp_path: Path) -> None:
    manifest = freeze({"a": ["1", "2"], "b": ["3", "4"]}, 2, 1, 1, 4, seed=0)
    path = manifest.save(tmp_path / "m.json")
    raw = json.loads(path.read_text())
    raw["tasks"][0][1] = raw["tasks"][0][1][::-1]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"m\.json: content checksum mismatch"):
        load_manifest(path)
    path.write_text("{")
    with pytest.raises(ConfigError, match=r"m\.json: not a readable episode manifest"):
        load_manifest(path)


def test_gzip_round_trip(tmp_path: Path) -> None:
    manifest = freeze({"a": ["1", "2"], "b": ["3", "4"], "c": ["5", "6"]}, 2, 1, 1, 5, seed=3)
    loaded = load_manifest(manifest.save(tmp_path / "m.json.gz"))
    assert loaded.content_sha256() == manifest.content_sha256()
    assert (loaded.support == manifest.support).all()


@pytest.fixture(scope="module")
def fake_test_cache(tmp_path_factory: pytest.TempPathFactory) -> CachedSplit:
    from tests.data.data_fakes import write_fake_miniimagenet

    base = tmp_path_factory.mktemp("manifest")
    root = write_fake_miniimagenet(base / "mini", "folders")
    prepare(
        "miniimagenet", base / "cache", root=root, image_size=12, splits=["test"], progress=False
    )
    return open_split(base / "cache" / "test")


def test_manifest_replays_the_sampler_episodes(fake_test_cache: CachedSplit) -> None:
    manifest = freeze(class_files_from_csv(fake_rows("test")), 3, 2, 3, 6, seed=8)
    frozen = ManifestSampler(fake_test_cache, manifest)
    live = EpisodeSampler(fake_test_cache, 3, 2, 3, seed=8)
    assert len(frozen) == 6
    for i in range(6):
        a, b = frozen.episode(i), live.episode(i)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(next(iter(frozen)).query_x, live.episode(0).query_x)


def test_missing_file_is_named(fake_test_cache: CachedSplit) -> None:
    manifest = freeze(class_files_from_csv(fake_rows("test")), 3, 2, 3, 6, seed=8)
    filenames = list(fake_test_cache.meta.filenames or [])
    victim = manifest.filenames[manifest.support[0, 0, 0]]
    filenames[filenames.index(victim)] = "renamed.jpg"
    meta = dataclasses.replace(fake_test_cache.meta, filenames=filenames)
    lacking = CachedSplit(fake_test_cache.images, fake_test_cache.labels, meta)
    with pytest.raises(ConfigError, match=rf"{victim}: needed by the episode manifest"):
        ManifestSampler(lacking, manifest)


def test_file_in_another_class_is_refused(fake_test_cache: CachedSplit) -> None:
    manifest = freeze(class_files_from_csv(fake_rows("test")), 3, 2, 3, 6, seed=8)
    labels = fake_test_cache.labels.copy()
    labels[[0, -1]] = labels[[-1, 0]]
    swapped = CachedSplit(fake_test_cache.images, labels, fake_test_cache.meta)
    with pytest.raises(ConfigError, match="the manifest puts it in class"):
        ManifestSampler(swapped, manifest)


def test_cache_without_filenames_is_refused(fake_test_cache: CachedSplit) -> None:
    meta = dataclasses.replace(fake_test_cache.meta, filenames=None)
    bare = CachedSplit(fake_test_cache.images, fake_test_cache.labels, meta)
    manifest = freeze(class_files_from_csv(fake_rows("test")), 3, 2, 3, 2, seed=8)
    with pytest.raises(ConfigError, match="records no filenames"):
        ManifestSampler(bare, manifest)


def test_manifests_freeze_from_any_cache_with_filenames() -> None:
    split = synthetic_split("val", image_size=8, images_per_class=4, seed=0)
    manifest = freeze(class_files_from_split(split), 5, 1, 2, 10, seed=1)
    sampler = ManifestSampler(split, manifest)
    live = EpisodeSampler(split, 5, 1, 2, seed=1)
    assert torch.equal(sampler.episode(9).support_x, live.episode(9).support_x)
