"""`scripts/bench_learning.py`: both sides train on the same episodes and are scored on the
same held-out tasks; with the same initialisation scale they start from the same accuracy
class (a tiny run in-process, on the real Omniglot subset)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_learning.py"
SUBSET = REPO.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not SUBSET.is_file(), reason="../shared/data/omniglot not beside"),
]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_learning", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = bench.prepare_subset(tmp_path_factory.mktemp("bench") / "cache")
    return path


def test_both_sides_train_and_score_every_point_and_shape(
    bench: ModuleType, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("meta_batch", 2), ("inner_steps", 1)):  # small, for both sides
        monkeypatch.setitem(bench.SETTINGS, name, value)
    job = bench.Job(cache, (1, 2), seed=0, tasks=3, ways=(20, 5), test_queries=2)
    for text in ("ours", "reference+init=closerlook"):
        rows = bench.run_arm(bench.Arm.parse(text), job)
        torch.set_num_threads(1)  # run_arm sets it for its worker; keep the fixture's
        assert [(r["updates"], r["ways"]) for r in rows] == [(1, 20), (1, 5), (2, 20), (2, 5)]
        assert all(r["arm"] == text for r in rows)
        # 3 tasks of w ways x 2 queries: accuracies are multiples of 1 / (3 * 2 * w)
        for row in rows:
            correct = row["accuracy"] / 100 * 3 * 2 * row["ways"]
            assert correct == pytest.approx(round(correct), abs=1e-6)


def test_the_reference_reads_the_projects_episodes_in_unit_range(
    bench: ModuleType, cache: Path
) -> None:
    job = bench.Job(cache, (1,), seed=0, tasks=1, ways=(5,), test_queries=1)
    series = bench.ReferenceSeries(bench.Arm.parse("reference"), job)
    images = series.inputs(series.sampler.episode(0).support_x)
    assert images.min() >= -1e-6 and images.max() <= 1 + 1e-6  # un-normalised to [0, 1]
    assert images.unique().numel() > 2  # resized strokes: grey levels, not a constant


def test_a_bad_arm_is_one_line(bench: ModuleType) -> None:
    with pytest.raises(SystemExit, match="reference knobs are"):
        bench.Arm.parse("reference+lr=3")
    with pytest.raises(SystemExit, match="must start with"):
        bench.Arm.parse("theirs")
