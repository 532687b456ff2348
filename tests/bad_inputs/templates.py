"""Things several rows of the bad-input table start from, each made once per test session
(``ws.copy(NAME, MAKER)``): a tiny trained run folder and a small Omniglot cache."""

from __future__ import annotations

from pathlib import Path

from metaacdc.config import TrainConfig
from metaacdc.data import prepare
from metaacdc.training import train
from tests.data import omniglot_fakes

#: a run that trains in about a second: 16 px synthetic images, 1-task meta-batches
TINY_RUN = TrainConfig(
    image_size=16,
    synthetic_images_per_class=4,
    queries=2,
    test_queries=2,
    inner_steps=1,
    meta_batch=1,
    meta_updates=2,
    val_every=1,
    val_tasks=2,
    workers=0,
)


def trained_run(folder: Path) -> None:
    """A finished :data:`TINY_RUN` (config.yaml, metrics.csv, best.pt and last.pt)."""
    train(TINY_RUN, folder, progress=False)


def omniglot_cache(folder: Path) -> None:
    """A cache of the fake Omniglot (tests/data/omniglot_fakes.py), Vinyals split: 9, 2
    and 4 characters of two drawings each, 28 px."""
    source = folder.parent / f"{folder.name}-source"
    for name in omniglot_fakes.BOTH:
        omniglot_fakes.write_zip(source / f"{name}.zip", (name,))
    prepare("omniglot", folder, root=source, progress=False, protocol="vinyals")
