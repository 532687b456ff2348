"""Episodes prepared in background workers, so training never waits on data.

The dataset is indexed by episode number and every episode is a pure function of its
sampler's seed and that number, so the loader yields the same episodes, in the same order,
whatever ``num_workers`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from metaacdc.data.sampler import Episode
from metaacdc.errors import ConfigError, check_positive_int


class IndexedSampler(Protocol):
    """Anything with ``episode(i)``: ``EpisodeSampler`` or ``ManifestSampler``."""

    def episode(self, i: int) -> Episode:
        """Episode number ``i``."""
        ...


class ShardedSampler:
    """The episodes one process takes when several share the work: its ``k``-th episode is
    episode ``(k // len(positions)) * block + positions[k % len(positions)]`` of ``sampler``.

    Training: ``block`` is the meta-batch and ``positions`` this process's tasks in it, so
    meta-update ``s`` gets episodes ``s * block + p``; evaluation: ``block`` is the number
    of processes and ``positions`` is ``[rank]``.
    """

    def __init__(self, sampler: IndexedSampler, block: int, positions: Sequence[int]) -> None:
        check_positive_int("block", block)
        if not positions or not all(0 <= p < block for p in positions):
            raise ConfigError(f"positions {list(positions)} must be non-empty, in 0..{block - 1}")
        self.sampler, self.block, self.positions = sampler, block, tuple(positions)

    def index(self, k: int) -> int:
        """The sampler's episode number behind this process's episode ``k``."""
        group, position = divmod(k, len(self.positions))
        return group * self.block + self.positions[position]

    def episode(self, k: int) -> Episode:
        """This process's episode ``k``."""
        return self.sampler.episode(self.index(k))


class EpisodeDataset(Dataset[Episode]):
    """Episodes ``start, start + 1, ..., start + length - 1`` of a sampler."""

    def __init__(self, sampler: IndexedSampler, length: int, start: int = 0) -> None:
        check_positive_int("length", length)
        check_positive_int("start", start, minimum=0)
        self.sampler, self.length, self.start = sampler, length, start

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.sampler.episode(self.start + index)


def _worker_init(worker_id: int) -> None:
    # One intra-op thread per worker: workers run side by side. No seeding here: episodes
    # carry their own generators, so workers need none.
    torch.set_num_threads(1)


def episode_loader(
    sampler: IndexedSampler,
    num_episodes: int,
    *,
    start: int = 0,
    num_workers: int = 2,
    prefetch_factor: int = 4,
    pin_memory: bool | None = None,
) -> DataLoader[Episode]:
    """A DataLoader yielding ``Episode`` objects ``start .. start + num_episodes - 1`` in order.

    Args:
        sampler: ``EpisodeSampler`` or ``ManifestSampler``.
        num_episodes: how many episodes to yield (e.g. meta-updates x meta-batch).
        start: first episode number (resume training at ``step * meta_batch``).
        num_workers: background processes; 0 samples in the calling process.
        prefetch_factor: episodes prepared ahead per worker.
        pin_memory: page-locked tensors for fast GPU copies; default when CUDA is available.
    """
    check_positive_int("num_workers", num_workers, minimum=0)
    check_positive_int("prefetch_factor", prefetch_factor)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    dataset = EpisodeDataset(sampler, num_episodes, start)
    # A private generator: creating the iterator draws a seed from it, and drawing from the
    # global one would shift the trainer's random stream (atom-drop) by a loader restart.
    generator = torch.Generator()
    if num_workers == 0:
        return DataLoader(
            dataset, batch_size=None, shuffle=False, pin_memory=pin, generator=generator
        )
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=True,
        prefetch_factor=prefetch_factor,
        worker_init_fn=_worker_init,
        generator=generator,
    )
