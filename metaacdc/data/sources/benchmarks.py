"""The other standard few-shot benchmarks, by source name: CIFAR-FS, FC100, CUB, tieredImageNet.

Each is planned into the same caches as miniImageNet (``prepare`` -> cache -> sampler), with
its standard class split shipped in ``metaacdc/resources/<name>/split.csv``. Modules are
imported only when their source is prepared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaacdc.data.sources.base import SplitPlan
from metaacdc.errors import ConfigError, check_choice

#: source name -> default image side (CIFAR's native 32 px; 84 px as for miniImageNet)
DEFAULT_IMAGE_SIZES: dict[str, int] = {"cifar-fs": 32, "fc100": 32, "cub": 84, "tieredimagenet": 84}
#: source name -> the options its planner takes (``data prepare`` flags)
OPTIONS: dict[str, tuple[str, ...]] = {
    "cifar-fs": (),
    "fc100": (),
    "cub": (),
    "tieredimagenet": ("layout",),
}


def plan_splits(
    source: str,
    root: Path,
    splits: Sequence[str],
    image_size: int | None = None,
    **options: Any,
) -> list[SplitPlan]:
    """Plans for ``splits`` of the benchmark ``source`` found at ``root``."""
    check_choice("source", source, tuple(DEFAULT_IMAGE_SIZES))
    unknown = sorted(set(options) - set(OPTIONS[source]))
    if unknown:
        raise ConfigError(f"option {unknown[0]!r} does not apply to source {source!r}")
    size = image_size if image_size is not None else DEFAULT_IMAGE_SIZES[source]
    if source in ("cifar-fs", "fc100"):
        from metaacdc.data.sources import cifar100

        return cifar100.plan_splits(source, root, splits, image_size=size)
    if source == "cub":
        from metaacdc.data.sources import cub

        return cub.plan_splits(root, splits, image_size=size)
    from metaacdc.data.sources import tieredimagenet

    return [tieredimagenet.plan_split(root, s, image_size=size, **options) for s in splits]
