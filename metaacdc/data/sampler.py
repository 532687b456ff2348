"""Seeded episodic sampling: episode ``i`` is a pure function of ``(seed, i)``."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from metaacdc.data.cache import CachedSplit
from metaacdc.data.normalise import Normalise, Transform
from metaacdc.errors import ConfigError, NonFiniteError, check_positive_int

"""``transform(images, generator)``: float images ``(N, C, H, W)`` in ``[0, 1]`` -> same."""


class Episode(NamedTuple):
    """One few-shot task.

    Attributes:
        support_x: ``(ways * shots, C, H, W)`` float32, normalised, class-major order.
        support_y: ``(ways * shots,)`` int64 labels in ``0..ways-1``.
        query_x: ``(ways * queries, C, H, W)`` float32, normalised, class-major order.
        query_y: ``(ways * queries,)`` int64 labels.
        class_ids: ``(ways,)`` int64 cache class index of label 0, 1, ...
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    class_ids: torch.Tensor


def episode_generators(seed: int, index: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of episode ``index``; independent of any other episode."""
    sequence = np.random.SeedSequence([seed, index])
    numpy_seq, torch_seq = sequence.spawn(2)
    torch_gen = torch.Generator().manual_seed(int(torch_seq.generate_state(1, np.uint64)[0] >> 1))
    return np.random.Generator(np.random.PCG64(numpy_seq)), torch_gen


def task_seed(seed: int, index: int) -> int:
    """Seed of the model's own randomness (atom-drop) while it trains on episode ``index``.

    A third stream of the episode's ``SeedSequence([seed, index])``, independent of the two
    that draw the episode, so a task sees the same atom-drop masks whichever process trains
    it and however many processes share the meta-batch.
    """
    stream = np.random.SeedSequence([seed, index], spawn_key=(2,))
    return int(stream.generate_state(1, np.uint64)[0] >> 1)


def draw_task(
    rng: np.random.Generator, class_indices: Sequence[np.ndarray], ways: int, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``ways`` classes (in label order) and ``per_class`` distinct items of each.

    Returns:
        ``classes`` ``(ways,)`` and ``items`` ``(ways, per_class)`` indices into the split.
    """
    classes = rng.choice(len(class_indices), size=ways, replace=False)
    items = np.stack(
        [
            class_indices[c][rng.choice(len(class_indices[c]), per_class, replace=False)]
            for c in classes
        ]
    )
    return classes, items


class EpisodeBuilder:
    """Turns item indices into normalised tensors; shared by the random and frozen samplers.

    Raises:
        ConfigError: images that are not uint8 (episodes would truncate them to uint8),
            or ``mean`` / ``std`` of a wrong length or a std not positive.
        NonFiniteError: float images holding NaN or infinity (one pass over them, made
            only for images that are not uint8), or a NaN or infinite ``mean`` / ``std``.
    """

    def __init__(
        self,
        split: CachedSplit,
        transform: Transform | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        _check_pixels(split)
        self.split = split
        mean = split.meta.mean if mean is None else mean
        std = split.meta.std if std is None else std
        for name, values in (("mean", mean), ("std", std)):
            try:
                finite = all(math.isfinite(float(value)) for value in values)
            except (TypeError, ValueError) as error:
                raise ConfigError(
                    f"normalisation {name}={values!r} is not valid; expected a list of numbers"
                ) from error
            if not finite:
                raise NonFiniteError(
                    f"normalisation {name}={list(values)} holds NaN or infinity; expected "
                    f"finite numbers (the {split.describe()})"
                )
        self.normalise = Normalise(split.channels, mean, std, transform)

    def images(self, indices: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Images at ``indices`` as normalised, contiguous ``(N, C, H, W)`` float32."""
        order = np.argsort(indices, kind="stable")  # sorted reads are kinder to a memmap
        pixels = np.empty((len(indices), *self.split.images.shape[1:]), dtype=np.uint8)
        pixels[order] = self.split.images[indices[order]]
        # numpy moves uint8 channels first faster than torch's permute().contiguous()
        batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        return self.normalise(batch, generator)

    def build(
        self, classes: np.ndarray, items: np.ndarray, shots: int, generator: torch.Generator
    ) -> Episode:
        """Episode from ``classes`` ``(ways,)`` and ``items`` ``(ways, shots + queries)``."""
        ways, per_class = items.shape
        queries = per_class - shots
        both = self.images(
            np.concatenate([items[:, :shots].ravel(), items[:, shots:].ravel()]), generator
        )
        labels = torch.arange(ways, dtype=torch.int64)
        return Episode(
            support_x=both[: ways * shots],
            support_y=labels.repeat_interleave(shots),
            query_x=both[ways * shots :],
            query_y=labels.repeat_interleave(queries),
            class_ids=torch.as_tensor(classes, dtype=torch.int64),
        )


def _check_pixels(split: CachedSplit) -> None:
    """Refuse a split whose images are not uint8 pixels (a split whose arrays were replaced
    after construction, or a look-alike), naming NaN and infinity when floats hold them:
    checked once here rather than in every episode."""
    images = split.images
    if images.dtype == np.uint8:
        return
    if np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images)
        if not finite.all():
            raise NonFiniteError(
                f"the images of the {split.describe()} hold {int(finite.size - finite.sum())} "
                "non-finite value(s) (NaN or infinity); episodes need uint8 pixels"
            )
    raise ConfigError(
        f"the images of the {split.describe()} are {images.dtype}; episodes need uint8 pixels "
        "(0..255), as a cache holds them"
    )


class EpisodeSampler:
    """Random ``ways``-way ``shots``-shot episodes from one cached split.

    Episode ``i`` depends only on ``(seed, i)`` (its generators come from
    ``SeedSequence([seed, i])``), so it is the same on any machine, in any process, and
    whatever the number of DataLoader workers. Labels ``0..ways-1`` follow a random class
    order; support and query images are distinct.

    Args:
        split: a :class:`~metaacdc.data.cache.CachedSplit` (``open_split``,
            ``synthetic_split``).
        ways: classes per episode.
        shots: support images per class.
        queries: query images per class.
        seed: episode seed.
        transform: optional ``transform(images, generator)`` on ``[0, 1]`` tensors before
            normalisation (``train_transform``, ``eval_transform``); its randomness comes
            from the episode's torch generator.
        num_episodes: length of iteration; ``None`` iterates without end.
        mean, std: normalisation; default the statistics recorded in the cache.

    Raises:
        ConfigError: fewer than ``ways`` classes, or a class with fewer than
            ``shots + queries`` images (the message names the classes); images that are
            not uint8; a bad ``mean`` or ``std``.
        NonFiniteError: (a ``ConfigError``) float images, or a ``mean`` / ``std``, holding
            NaN or infinity.
    """

    def __init__(
        self,
        split: CachedSplit,
        ways: int,
        shots: int,
        queries: int,
        seed: int,
        *,
        transform: Transform | None = None,
        num_episodes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        check_positive_int("ways", ways)
        check_positive_int("shots", shots)
        check_positive_int("queries", queries)
        check_positive_int("seed", seed, minimum=0)
        if num_episodes is not None:
            check_positive_int("num_episodes", num_episodes)
        if split.num_classes < ways:
            raise ConfigError(
                f"ways={ways} but the {split.describe()} has only {split.num_classes} classes"
            )
        needed = shots + queries
        short = [
            (split.class_names[c], len(ix))
            for c, ix in enumerate(split.class_indices)
            if len(ix) < needed
        ]
        if short:
            listed = ", ".join(f"{name} ({count})" for name, count in short[:5])
            raise ConfigError(
                f"shots + queries = {needed} images per class are needed, but "
                f"{len(short)} class(es) of the {split.describe()} have fewer: {listed}"
                f"{', ...' if len(short) > 5 else ''}; lower --shots/--queries"
            )
        self.split, self.ways, self.shots, self.queries, self.seed = (
            split,
            ways,
            shots,
            queries,
            seed,
        )
        self.num_episodes = num_episodes
        self.builder = EpisodeBuilder(split, transform, mean, std)

    def indices(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Class indices ``(ways,)`` and image indices ``(ways, shots + queries)`` of episode i."""
        rng, _ = episode_generators(self.seed, i)
        return draw_task(rng, self.split.class_indices, self.ways, self.shots + self.queries)

    def episode(self, i: int) -> Episode:
        """Episode number ``i`` (any non-negative integer)."""
        if i < 0:
            raise ConfigError(f"episode index must be >= 0, got {i}")
        rng, generator = episode_generators(self.seed, i)
        classes, items = draw_task(
            rng, self.split.class_indices, self.ways, self.shots + self.queries
        )
        return self.builder.build(classes, items, self.shots, generator)

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("an EpisodeSampler without num_episodes has no length")
        return self.num_episodes

    def __iter__(self) -> Iterator[Episode]:
        i = 0
        while self.num_episodes is None or i < self.num_episodes:
            yield self.episode(i)
            i += 1
