"""Tiny run folders for the API, evaluator and `metaacdc evaluate` tests (no trainer needed):
an untrained Conv4 on small synthetic images, saved as a trainer would save it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from metaacdc.config import TrainConfig, resolve
from metaacdc.data import (
    CachedSplit,
    DataFacts,
    EpisodeSampler,
    ManifestSampler,
    class_files_from_split,
    freeze,
    synthetic_split,
)
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.experiment import build_model, evaluation_transform
from metaacdc.runs.folder import RunFolder, save_learner

IMAGE_SIZE = 32
IMAGES_PER_CLASS = 12
TEST_QUERIES = 4


@functools.cache
def synthetic(split: str) -> CachedSplit:
    """A small synthetic split, generated once per test session."""
    return synthetic_split(split, IMAGE_SIZE, IMAGES_PER_CLASS)


def tiny_config(**overrides: Any) -> TrainConfig:
    """A resolved Conv4 config on 32 px synthetic images (inner lr raised so that five
    steps visibly move an untrained model)."""
    values: dict[str, Any] = {
        "backbone": "conv4",
        "image_size": IMAGE_SIZE,
        "synthetic_images_per_class": IMAGES_PER_CLASS,
        "test_queries": TEST_QUERIES,
        "inner_lr": 0.1,
        **overrides,
    }
    return resolve(TrainConfig(**values))


def make_run(
    root: Path,
    config: TrainConfig | None = None,
    split: CachedSplit | None = None,
    seed: int = 0,
) -> RunFolder:
    """A run folder holding ``config.yaml`` and ``checkpoints/best.pt`` of a freshly
    initialised model (``torch.manual_seed(seed)``), data facts from ``split`` (default the
    synthetic train split)."""
    config = config or tiny_config()
    split = split or synthetic("train")
    torch.manual_seed(seed)
    model = build_model(config, split.channels)
    assert config.first_order is not None
    learner = MetaLearner(model, config.inner_lr, config.first_order, config.adapt, config.meta_sgd)
    folder = RunFolder(root)
    folder.write_config(config)
    save_learner(
        folder.best, config=config, data=DataFacts.from_split(split), step=0, learner=learner
    )
    return folder


def evaluation_episodes(learner: Learner, seed: int = 0) -> EpisodeSampler:
    """The sampler ``metaacdc evaluate`` uses for a tiny run: 5-way 1-shot test tasks of the
    synthetic data, with the run's evaluation transform and normalisation."""
    return EpisodeSampler(
        synthetic("test"),
        ways=5,
        shots=1,
        queries=TEST_QUERIES,
        seed=seed,
        transform=evaluation_transform(learner.config),
        mean=learner.data.mean,
        std=learner.data.std,
    )


def frozen_episodes(learner: Learner, tasks: int) -> ManifestSampler:
    """``tasks`` 5-way 1-shot test tasks of the synthetic data frozen into a manifest (seed
    0: the tasks of :func:`evaluation_episodes`), replayed with the run's evaluation
    transform and normalisation."""
    split = synthetic("test")
    manifest = freeze(class_files_from_split(split), 5, 1, TEST_QUERIES, tasks, seed=0)
    return ManifestSampler(
        split,
        manifest,
        transform=evaluation_transform(learner.config),
        mean=learner.data.mean,
        std=learner.data.std,
    )
