"""Background loading: same episodes in the same order whatever the number of workers."""

from __future__ import annotations

import pytest
import torch

from metaacdc.data import EpisodeSampler, episode_loader, synthetic_split, train_transform
from metaacdc.errors import ConfigError


@pytest.fixture(scope="module")
def sampler() -> EpisodeSampler:
    split = synthetic_split("val", image_size=12, images_per_class=6, seed=0)
    return EpisodeSampler(split, ways=5, shots=1, queries=2, seed=7, transform=train_transform())


def _collect(loader) -> list:
    return [episode for episode in loader]


def test_workers_do_not_change_the_episodes(sampler: EpisodeSampler) -> None:
    inline = _collect(episode_loader(sampler, 6, start=3, num_workers=0))
    workers = _collect(episode_loader(sampler, 6, start=3, num_workers=2, prefetch_factor=2))
    assert len(inline) == len(workers) == 6
    for i, (a, b) in enumerate(zip(inline, workers, strict=True)):
        direct = sampler.episode(3 + i)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert all(torch.equal(x, y) for x, y in zip(a, direct, strict=True))


def test_memory_mapped_cache_travels_to_workers(tmp_path) -> None:
    from metaacdc.data import open_split, prepare

    prepare(
        "synthetic", tmp_path, image_size=8, splits=["test"], progress=False, images_per_class=4
    )
    split = open_split(tmp_path / "test")
    sampler = EpisodeSampler(split, ways=3, shots=1, queries=1, seed=0)
    loaded = _collect(episode_loader(sampler, 2, num_workers=1, pin_memory=False))
    assert torch.equal(loaded[1].query_x, sampler.episode(1).query_x)


def test_bad_loader_arguments(sampler: EpisodeSampler) -> None:
    with pytest.raises(ConfigError, match="num_workers=-1"):
        episode_loader(sampler, 3, num_workers=-1)
    with pytest.raises(ConfigError, match="length=0"):
        episode_loader(sampler, 0)


def test_pickled_cache_reopens_the_memory_map(tmp_path) -> None:
    import pickle

    import numpy as np

    from metaacdc.data import open_split, prepare

    prepare("synthetic", tmp_path, image_size=8, splits=["val"], progress=False, images_per_class=2)
    split = open_split(tmp_path / "val")
    payload = pickle.dumps(split)
    assert len(payload) < split.images.nbytes  # pixels are not copied (spawned workers)
    again = pickle.loads(payload)
    assert isinstance(again.images, np.memmap)
    assert np.array_equal(again.images, split.images)
