"""EpisodeSampler: seeded, pure per episode, validated, with optional tensor transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaacdc.data import (
    CachedSplit,
    EpisodeSampler,
    eval_transform,
    synthetic_split,
    train_transform,
)
from metaacdc.errors import ConfigError

# numpy's SeedSequence/PCG64/Generator.choice streams; a change here changes every episode.
# Golden values: copied from the code's output at commit d66d6bd (2026-11-22). Their
# neighbour, test_golden_draw_is_a_valid_draw_of_numpys_documented_streams, checks them
# against the split's structure and numpy's generators directly.
GOLDEN_CLASSES = [7, 19, 0]
GOLDEN_ITEMS = [[63, 59], [153, 156], [5, 6]]


@pytest.fixture(scope="module")
def split() -> CachedSplit:
    return synthetic_split("test", image_size=16, images_per_class=8, seed=2)


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_episode_shapes_labels_and_class_ids(split: CachedSplit) -> None:
    episode = EpisodeSampler(split, ways=5, shots=2, queries=3, seed=0).episode(0)
    assert episode.support_x.shape == (10, 3, 16, 16)
    assert episode.query_x.shape == (15, 3, 16, 16)
    assert episode.support_x.dtype == torch.float32 and episode.support_x.is_contiguous()
    assert episode.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert episode.query_y.tolist() == [k for k in range(5) for _ in range(3)]
    assert episode.support_y.dtype == episode.class_ids.dtype == torch.int64
    assert len(set(episode.class_ids.tolist())) == 5


def test_images_come_from_their_class_and_support_query_are_disjoint(split) -> None:
    sampler = EpisodeSampler(split, ways=4, shots=3, queries=5, seed=9)
    for i in range(20):
        classes, items = sampler.indices(i)
        assert len(np.unique(items)) == items.size
        assert (split.labels[items] == classes[:, None]).all()
        assert sampler.episode(i).class_ids.tolist() == classes.tolist()


def test_pixels_are_the_cache_pixels_normalised(split: CachedSplit) -> None:
    sampler = EpisodeSampler(split, ways=3, shots=1, queries=2, seed=4)
    episode = sampler.episode(5)
    _, items = sampler.indices(5)
    mean = torch.tensor(split.meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(split.meta.std).view(1, 3, 1, 1)
    restored = episode.support_x * std + mean
    expected = torch.from_numpy(split.images[items[:, 0]]).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(restored, expected, atol=1e-5)


def test_label_order_is_random(split: CachedSplit) -> None:
    sampler = EpisodeSampler(split, ways=5, shots=1, queries=1, seed=0)
    orders = [sampler.episode(i).class_ids.tolist() for i in range(10)]
    assert any(order != sorted(order) for order in orders)


def test_same_seed_same_episodes_in_any_order(split: CachedSplit) -> None:
    a = EpisodeSampler(split, ways=5, shots=1, queries=3, seed=11)
    b = EpisodeSampler(split, ways=5, shots=1, queries=3, seed=11)
    forward = [a.episode(i) for i in range(5)]
    backward = [b.episode(i) for i in reversed(range(5))][::-1]
    assert all(_equal(x, y) for x, y in zip(forward, backward, strict=True))
    assert _equal(next(iter(a)), forward[0])


def test_golden_draw_pins_cross_machine_sampling(split: CachedSplit) -> None:
    classes, items = EpisodeSampler(split, ways=3, shots=1, queries=1, seed=123).indices(7)
    assert classes.tolist() == GOLDEN_CLASSES
    assert items.tolist() == GOLDEN_ITEMS


def test_golden_draw_is_a_valid_draw_of_numpys_documented_streams(split: CachedSplit) -> None:
    """Independently of the sampler: the golden items are distinct images of their golden
    classes (the split holds 8 images per class, class-major: image ``i`` is of class
    ``i // 8``), and they are what numpy's own generators give for the documented scheme:
    episode ``i``'s numpy stream is the first child of ``SeedSequence([seed, i])``, which
    picks the classes, then each class's images among its own, without replacement."""
    classes, items = np.array(GOLDEN_CLASSES), np.array(GOLDEN_ITEMS)
    assert len(set(GOLDEN_CLASSES)) == 3 and all(0 <= c < 20 for c in GOLDEN_CLASSES)
    assert (items // 8 == classes[:, None]).all()
    assert len(np.unique(items)) == items.size  # support (column 0) and query apart
    assert (split.labels[items] == classes[:, None]).all()
    numpy_stream = np.random.SeedSequence([123, 7]).spawn(2)[0]
    rng = np.random.Generator(np.random.PCG64(numpy_stream))
    drawn = rng.choice(20, size=3, replace=False)
    assert drawn.tolist() == GOLDEN_CLASSES
    for c, golden in zip(drawn, GOLDEN_ITEMS):
        assert (8 * c + rng.choice(8, 2, replace=False)).tolist() == golden


def test_different_seeds_give_different_episodes(split: CachedSplit) -> None:
    a = EpisodeSampler(split, ways=5, shots=1, queries=3, seed=0)
    b = EpisodeSampler(split, ways=5, shots=1, queries=3, seed=1)
    differ = [not np.array_equal(a.indices(i)[1], b.indices(i)[1]) for i in range(20)]
    assert all(differ)
    assert not _equal(a.episode(0), a.episode(1))


def test_iteration_length(split: CachedSplit) -> None:
    sampler = EpisodeSampler(split, ways=2, shots=1, queries=1, seed=0, num_episodes=3)
    assert len(sampler) == 3 and len(list(sampler)) == 3
    with pytest.raises(TypeError, match="no length"):
        len(EpisodeSampler(split, ways=2, shots=1, queries=1, seed=0))


def test_too_many_ways_is_refused(split: CachedSplit) -> None:
    with pytest.raises(ConfigError, match=r"ways=21 but the synthetic test split .* 20 classes"):
        EpisodeSampler(split, ways=21, shots=1, queries=1, seed=0)


def test_class_with_too_few_images_is_named(split: CachedSplit) -> None:
    labels = split.labels.copy()
    labels[labels == 3] = 4  # class 3 loses its images to class 4 ...
    labels[np.flatnonzero(labels == 4)[0]] = 3  # ... but one
    thin = CachedSplit(split.images, labels, split.meta)
    with pytest.raises(ConfigError, match=r"1 class\(es\).*synthetic-083 \(1\).*lower --shots"):
        EpisodeSampler(thin, ways=5, shots=5, queries=3, seed=0)
    with pytest.raises(ConfigError, match="shots \\+ queries = 9"):
        EpisodeSampler(split, ways=5, shots=5, queries=4, seed=0)


@pytest.mark.parametrize("argument", ["ways", "shots", "queries"])
def test_non_positive_sizes_are_refused(split: CachedSplit, argument: str) -> None:
    sizes = {"ways": 2, "shots": 1, "queries": 1, argument: 0}
    with pytest.raises(ConfigError, match=f"{argument}=0 is not valid"):
        EpisodeSampler(split, seed=0, **sizes)


def test_train_transform_is_seeded_per_episode(split: CachedSplit) -> None:
    plain = EpisodeSampler(split, ways=5, shots=1, queries=2, seed=3)
    augmented = EpisodeSampler(
        split, ways=5, shots=1, queries=2, seed=3, transform=train_transform()
    )
    again = EpisodeSampler(split, ways=5, shots=1, queries=2, seed=3, transform=train_transform())
    torch.manual_seed(0)  # the global generator must play no part
    first = augmented.episode(4)
    torch.manual_seed(1)
    assert _equal(first, again.episode(4))
    assert first.support_x.shape == plain.episode(4).support_x.shape
    assert not torch.equal(first.support_x, plain.episode(4).support_x)
    assert torch.equal(first.class_ids, plain.episode(4).class_ids)


def test_eval_transform_zooms_the_centre() -> None:
    images = torch.zeros(1, 1, 40, 40)
    images[..., 10:30, 10:30] = 1.0
    out = eval_transform()(images)
    assert out.shape == images.shape
    assert out[..., 20, 20].item() == 1.0 and out[..., 0, 0].item() == 0.0
    grown = out.sum().item() / images.sum().item()
    assert grown == pytest.approx(46 / 40 * 46 / 40, rel=0.05)  # resized to 46 px, cropped


def test_bad_normalisation_is_refused(split: CachedSplit) -> None:
    with pytest.raises(ConfigError, match="normalisation needs 3 means"):
        EpisodeSampler(split, ways=2, shots=1, queries=1, seed=0, mean=[0.5], std=[0.2])
