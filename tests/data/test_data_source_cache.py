"""The content-keyed user cache of raw sources: reuse without replanning, a new cache when
the files change, and two processes preparing one cache at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock

from metaacdc.data import open_split
from metaacdc.data.source_cache import default_cache_root, ensure_cache, quick_key
from tests.conftest import REPO
from tests.data.omniglot_fakes import BOTH, drawing, write_folder, write_zip

SPLITS = ("train", "val", "test")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "omniglot"
    for name in BOTH:
        write_zip(root / f"{name}.zip", (name,))
    return root


def _stamps(cache: Path) -> list[int]:
    return [(cache / s / "meta.json").stat().st_mtime_ns for s in SPLITS]


def test_cache_root_is_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METAACDC_CACHE", str(tmp_path / "mine"))
    assert default_cache_root() == tmp_path / "mine"
    monkeypatch.delenv("METAACDC_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "metaacdc"


def test_later_runs_reuse_the_cache_without_planning(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    cache = ensure_cache("omniglot", source, 8, cache_root=root, progress=False)
    assert cache.parent == root and cache.name.startswith("omniglot-8px-")
    stamps = _stamps(cache)

    def no_planning(*args: object, **kwargs: object) -> None:
        raise AssertionError("planned again")

    monkeypatch.setattr("metaacdc.data.source_cache.plan_splits", no_planning)
    assert ensure_cache("omniglot", source, 8, cache_root=root, progress=False) == cache
    monkeypatch.undo()
    os.utime(source / "images_background.zip")  # touched, same content: same cache, kept
    assert ensure_cache("omniglot", source, 8, cache_root=root, progress=False) == cache
    assert _stamps(cache) == stamps
    entry = json.loads(
        (root / "index" / f"{quick_key('omniglot', source, 8, {})}.json").read_text()
    )
    assert entry["cache"] == cache.name


def test_other_settings_or_files_give_another_cache(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = ensure_cache("omniglot", source, 8, cache_root=root, progress=False)
    rotated = ensure_cache("omniglot", source, 8, cache_root=root, progress=False, rotations=True)
    vinyals = ensure_cache(
        "omniglot", source, 8, cache_root=root, progress=False, protocol="vinyals"
    )
    larger = ensure_cache("omniglot", source, 10, cache_root=root, progress=False)
    assert len({first, rotated, vinyals, larger}) == 4
    assert open_split(vinyals / "test").meta.preprocessing["protocol"] == "vinyals"
    with zipfile.ZipFile(source / "images_background_small1.zip", "w") as archive:
        archive.writestr("images_background_small1/Latin/character03/0099_01.png", drawing(99))
    changed = ensure_cache("omniglot", source, 8, cache_root=root, progress=False)
    assert changed != first
    assert sum(open_split(changed / s).num_classes for s in SPLITS) == 16


CHILD = """
import os, sys, time
from pathlib import Path
import metaacdc.data.prepare_cache as prepare_cache
from metaacdc.data.source_cache import ensure_cache

source, root, barrier = sys.argv[1:]
Path(barrier, str(os.getpid())).touch()
original = prepare_cache._prepare_split

def slow(plan, directory, progress):
    # start writing only once both processes run, then give the other time to arrive
    deadline = time.monotonic() + 60
    while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    prepare_cache._prepare_split = original
    return original(plan, directory, progress)

prepare_cache._prepare_split = slow
print(ensure_cache("omniglot", source, 8, cache_root=root, progress=True))
"""


def _child(source: Path, root: Path, log: Path) -> subprocess.Popen[str]:
    """A process preparing ``source`` into the cache root ``root``, its stderr in ``log``;
    it writes its splits once two children have started (``log``'s folder/barrier)."""
    barrier = log.parent / "barrier"
    barrier.mkdir(exist_ok=True)
    with open(log, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, str(source), str(root), str(barrier)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def _finish(child: subprocess.Popen[str], log: Path) -> str:
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, log.read_text()
    return out.strip()


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("forms", ["same source", "zip and folder"])
def test_two_processes_prepare_one_cache_at_once(tmp_path: Path, forms: str) -> None:
    zipped = tmp_path / "zipped"
    for name in BOTH:
        write_zip(zipped / f"{name}.zip", (name,))
    folders = tmp_path / "folders"
    for name in BOTH:
        write_folder(folders, name)
    root = tmp_path / "cache"
    other = zipped if forms == "same source" else folders
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    children = [_child(zipped, root, logs[0]), _child(other, root, logs[1])]
    first, second = (_finish(child, log) for child, log in zip(children, logs))
    assert "waiting: another process is preparing" in "".join(p.read_text() for p in logs)
    assert first == second
    reference = ensure_cache("omniglot", folders, 8, cache_root=tmp_path / "alone", progress=False)
    for split in SPLITS:
        cached, alone = open_split(Path(first) / split), open_split(reference / split)
        assert cached.meta.images_sha256 == alone.meta.images_sha256
        assert cached.meta == alone.meta
    assert _leftovers(root) == []


def test_a_second_process_waits_for_the_first(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    lock = FileLock(root / "locks" / f"{quick_key('omniglot', source, 8, {})}.lock")
    (root / "locks").mkdir(parents=True)
    log = tmp_path / "child.log"
    (tmp_path / "barrier").mkdir()
    (tmp_path / "barrier" / "test").touch()  # no second child to wait for
    with lock:  # as a first process preparing this source would
        child = _child(source, root, log)
        deadline = time.monotonic() + 60
        while "waiting: another process is preparing" not in log.read_text():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert not list(root.glob("omniglot-*"))  # it waits: writes nothing
    out = _finish(child, log)
    assert open_split(Path(out) / "train").num_classes > 0
