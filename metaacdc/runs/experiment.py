"""From a resolved config to the objects of a run: the model, the data splits, and the
samplers and transforms of its training and evaluation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from metaacdc.backbones import Backbone, create_backbone
from metaacdc.config import TrainConfig, conv_kind_of
from metaacdc.data import (
    CachedSplit,
    DataFacts,
    EpisodeSampler,
    EvalTransform,
    TrainTransform,
    is_complete,
    open_split,
    prepare,
    synthetic_split,
    train_transform,
)
from metaacdc.data.transforms import eval_transform_for, uses_image_transforms
from metaacdc.errors import ConfigError

SPLITS = ("train", "val", "test")


def build_model(config: TrainConfig, channels: int) -> Backbone:
    """The backbone a (resolved) config describes, with a ``ways``-way head."""
    assert config.image_size is not None, "resolve() the config first"
    return create_backbone(
        config.backbone,
        conv_kind_of(config),
        num_classes=config.ways,
        image_size=config.image_size,
        in_channels=channels,
    )


def default_cache_root() -> Path:
    """Where raw sources given to ``--data`` are prepared: ``$METAACDC_CACHE`` or
    ``~/.cache/metaacdc``."""
    return Path(os.environ.get("METAACDC_CACHE", Path.home() / ".cache" / "metaacdc"))


def cache_dir_for(config: TrainConfig) -> Path | None:
    """The cache root of the config's data: ``--data`` itself when it is a cache, a
    per-source folder under :func:`default_cache_root` when it is a raw source, ``None`` for
    the in-memory synthetic default."""
    if config.data is None:
        if config.dataset == "synthetic":
            return None
        raise ConfigError(f"dataset={config.dataset!r} needs --data (a cache or a raw source)")
    data = Path(config.data).expanduser().resolve()
    if not data.exists():
        raise FileNotFoundError(f"{data}: --data path not found")
    if is_complete(data / "train"):
        return data
    key = hashlib.sha256(str(data).encode()).hexdigest()[:10]
    return default_cache_root() / f"{config.dataset}-{config.image_size}px-{key}"


def open_splits(config: TrainConfig, splits: tuple[str, ...] = SPLITS) -> dict[str, CachedSplit]:
    """The requested splits at the config's image size, preparing a raw source on first use."""
    assert config.image_size is not None, "resolve() the config first"
    cache = cache_dir_for(config)
    if cache is None:
        return {
            split: synthetic_split(split, config.image_size, config.synthetic_images_per_class)
            for split in splits
        }
    if not all(is_complete(cache / split) for split in splits):
        assert config.data is not None
        prepare(config.dataset, cache, root=config.data, image_size=config.image_size)
    return {split: open_split(cache / split, image_size=config.image_size) for split in splits}


def training_transform(config: TrainConfig) -> TrainTransform | None:
    """The train-time augmentation of a run, if any."""
    return train_transform() if uses_image_transforms(config.dataset, config.augment) else None


def evaluation_transform(config: TrainConfig) -> EvalTransform | None:
    """The test-time transform of a run (validation, evaluation, adaptation API)."""
    return eval_transform_for(config.dataset, config.augment)


def evaluation_sampler(
    config: TrainConfig, split: CachedSplit, data: DataFacts, seed: int
) -> EpisodeSampler:
    """Test-time tasks of a run (validation and evaluation): its task shape with
    ``test_queries``, its test-time transform, and the normalisation of its training data
    (``data``)."""
    return EpisodeSampler(
        split,
        config.ways,
        config.shots,
        config.test_queries,
        seed,
        transform=evaluation_transform(config),
        mean=data.mean,
        std=data.std,
    )
