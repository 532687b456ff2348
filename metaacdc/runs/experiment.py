"""From a resolved config to the objects of a run: the model, the data splits, and the
samplers and transforms of its training and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaacdc.backbones import Backbone, create_backbone
from metaacdc.backbones.init import initialise
from metaacdc.config import TrainConfig, chosen_init, conv_kind_of
from metaacdc.data import (
    CachedSplit,
    DataFacts,
    EpisodeSampler,
    EvalTransform,
    TrainTransform,
    open_split,
    synthetic_split,
    train_transform,
)
from metaacdc.data.source_cache import describe_cache, ensure_cache, is_cache
from metaacdc.data.transforms import eval_transform_for, uses_image_transforms
from metaacdc.errors import ConfigError

SPLITS = ("train", "val", "test")


def build_model(config: TrainConfig, channels: int) -> Backbone:
    """The backbone a (resolved) config describes, with a ``ways``-way head, initialised by
    its ``init`` scheme."""
    assert config.image_size is not None, "resolve() the config first"
    model = create_backbone(
        config.backbone,
        conv_kind_of(config),
        num_classes=config.ways,
        image_size=config.image_size,
        in_channels=channels,
    )
    initialise(model, chosen_init(config.init))
    return model


def source_options(config: TrainConfig) -> dict[str, Any]:
    """The preparation options of a raw ``--data`` source: the config's ``data_protocol``
    (Omniglot), else the dataset's defaults (Omniglot ``random`` without rotations; see
    :mod:`metaacdc.data.source_cache`)."""
    return {} if config.data_protocol is None else {"protocol": config.data_protocol}


def cache_for(config: TrainConfig, progress: bool = True) -> Path | None:
    """The cache of the config's data: ``--data`` itself when it is a cache; for a raw
    source (an archive, an extracted folder, or a folder holding them) its content-keyed
    cache in the user cache directory (``$METAACDC_CACHE``), prepared on first use;
    ``None`` for the in-memory synthetic default."""
    if config.data is None:
        if config.dataset == "synthetic":
            return None
        raise ConfigError(f"dataset={config.dataset!r} needs --data (a cache or a raw source)")
    data = Path(config.data).expanduser().resolve()
    if not data.exists():
        raise FileNotFoundError(f"{data}: --data path not found")
    if is_cache(data):
        return data
    assert config.dataset is not None, "resolve() the config first"
    return ensure_cache(
        config.dataset, data, config.image_size, progress=progress, **source_options(config)
    )


def open_splits(config: TrainConfig, splits: tuple[str, ...] = SPLITS) -> dict[str, CachedSplit]:
    """The requested splits at the config's image size, preparing a raw source on first use."""
    assert config.image_size is not None, "resolve() the config first"
    cache = cache_for(config)
    if cache is None:
        return {
            split: synthetic_split(split, config.image_size, config.synthetic_images_per_class)
            for split in splits
        }
    return {split: open_split(cache / split, image_size=config.image_size) for split in splits}


def data_record(config: TrainConfig) -> dict[str, Any]:
    """What a run folder records of its data (``data.json``): the ``--data`` given, the
    cache it was read from and each split's checksums (``None`` for the in-memory synthetic
    default, which its settings fix)."""
    cache = cache_for(config, progress=False)
    record: dict[str, Any] = {"dataset": config.dataset, "data": config.data}
    if cache is None:
        return {**record, "cache": None, "splits": {}}
    return {**record, **describe_cache(cache)}


def training_transform(config: TrainConfig) -> TrainTransform | None:
    """The train-time augmentation of a run, if any."""
    assert config.dataset is not None, "resolve() the config first"
    return train_transform() if uses_image_transforms(config.dataset, config.augment) else None


def evaluation_transform(config: TrainConfig) -> EvalTransform | None:
    """The test-time transform of a run (validation, evaluation, adaptation API)."""
    assert config.dataset is not None, "resolve() the config first"
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
