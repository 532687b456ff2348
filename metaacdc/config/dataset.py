"""Which dataset a run reads: the data decides. A cache records the source it was prepared
from, and that sets the dataset and with it the protocol (augmentation, test-time zoom,
default image size); a ``--dataset`` that says otherwise is refused rather than followed."""

from __future__ import annotations

from pathlib import Path

from metaacdc.config.schema import DATASETS
from metaacdc.data.cache import META_FILE, SPLITS, CacheMeta
from metaacdc.errors import ConfigError


def recorded_meta(data: Path) -> CacheMeta | None:
    """What a cache at ``data`` records of its preparation (its first complete split's
    ``meta.json``); ``None`` when ``data`` is not a cache (a raw source)."""
    for split in SPLITS:
        meta = data / split / META_FILE
        if meta.is_file():
            return CacheMeta.from_file(meta)
    return None


def dataset_of(dataset: str | None, data: str | None, protocol: str | None = None) -> str:
    """The dataset of a run given ``dataset`` (``None``: whatever the data is), ``data``
    (a cache or raw source; ``None``: the in-memory synthetic source) and the Omniglot split
    ``protocol`` asked for (``None``: the data's).

    A cache's recorded source decides; a raw source (an archive or its folder) needs
    ``dataset`` to say which reader prepares it. When ``data`` is not on this machine (a
    checkpoint's config read elsewhere) the recorded ``dataset`` stands.

    Raises:
        ConfigError: ``dataset`` or ``protocol`` contradicts what the cache records, or a
            raw source without ``dataset``.
        FileNotFoundError: ``dataset`` is ``None`` and ``data`` does not exist.
    """
    if data is None:
        return dataset or "synthetic"
    path = Path(data).expanduser()
    if not path.exists():
        if dataset is None:
            raise FileNotFoundError(f"{path}: --data path not found")
        return dataset
    meta = recorded_meta(path) if path.is_dir() else None
    if meta is None:
        if dataset is None:
            raise ConfigError(
                f"{path} is not a prepared cache: name the dataset it holds with --dataset "
                f"(one of {', '.join(DATASETS[1:])})"
            )
        return dataset
    if dataset is not None and dataset != meta.source:
        raise ConfigError(
            f"dataset={dataset} contradicts the data: {path} is a cache of {meta.source}; "
            f"drop --dataset (the cache decides) or give --data a {dataset} source"
        )
    prepared = meta.preprocessing.get("protocol")
    if protocol is not None and protocol != prepared:
        raise ConfigError(
            f"data_protocol={protocol} contradicts the data: {path} is a cache prepared "
            f"with protocol {prepared}; drop --data-protocol (the cache decides) or give "
            "--data the raw source"
        )
    return meta.source
