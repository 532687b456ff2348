"""Episodic data: sources cached once as uint8 arrays, seeded episode samplers, frozen tasks.

Typical use::

    from metaacdc.data import EpisodeSampler, open_split, train_transform
    split = open_split("cache/miniimagenet/train")   # or synthetic_split("train")
    sampler = EpisodeSampler(split, ways=5, shots=1, queries=16, seed=0,
                             transform=train_transform())
    episode = sampler.episode(0)   # Episode(support_x, support_y, query_x, query_y, class_ids)
"""

from metaacdc.data.cache import (
    FORMAT_VERSION,
    CachedSplit,
    CacheMeta,
    is_complete,
    open_split,
    split_dir,
)
from metaacdc.data.facts import DataFacts
from metaacdc.data.loader import EpisodeDataset, episode_loader
from metaacdc.data.manifest import (
    Manifest,
    ManifestSampler,
    class_files_from_csv,
    class_files_from_split,
    freeze,
    load_manifest,
)
from metaacdc.data.prepare_cache import SOURCES, PrepareResult, prepare
from metaacdc.data.sampler import Episode, EpisodeSampler, episode_generators
from metaacdc.data.sources.miniimagenet import shipped_split_csv
from metaacdc.data.sources.synthetic import synthetic_split
from metaacdc.data.transforms import EvalTransform, TrainTransform, eval_transform, train_transform

__all__ = [
    "FORMAT_VERSION",
    "SOURCES",
    "CacheMeta",
    "CachedSplit",
    "DataFacts",
    "Episode",
    "EpisodeDataset",
    "EpisodeSampler",
    "EvalTransform",
    "Manifest",
    "ManifestSampler",
    "PrepareResult",
    "TrainTransform",
    "class_files_from_csv",
    "class_files_from_split",
    "episode_generators",
    "episode_loader",
    "eval_transform",
    "freeze",
    "is_complete",
    "load_manifest",
    "open_split",
    "prepare",
    "shipped_split_csv",
    "split_dir",
    "synthetic_split",
    "train_transform",
]
