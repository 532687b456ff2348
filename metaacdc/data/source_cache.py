"""Raw sources given as ``--data``, prepared once into a content-keyed cache in the user
cache directory and found again by later runs.

A source is whatever the dataset was downloaded as: a zip/tar archive, an extracted folder,
or a folder holding them. The cache root (``$METAACDC_CACHE``, default
``~/.cache/metaacdc``) holds:

- ``<dataset>-<size>px-<key>/{train,val,test}/``: the caches (:mod:`metaacdc.data.cache`).
  ``key`` is a sha256 of the splits' fingerprints, that is of the names and sizes of the
  files the dataset reads and of every preparation setting (image size, protocol, ...),
  never of where the source lies or of the form it came in: an archive, the folder it
  extracts to, and a folder holding either share one cache.
- ``index/<quick>.json``: which cache a source was prepared into. ``quick`` is a sha256 of
  the dataset, the settings, and the source's file names, sizes and modification times
  (paths relative to the source, nothing opened), so a later run finds its cache without
  planning again (which for a pickle means reading it, for an archive extracting it).
- ``locks/<quick>.lock``: held while a source is prepared; a second process preparing the
  same source waits, then finds the cache. Writing a cache also holds the lock beside it
  (:func:`~metaacdc.data.prepare_cache.write_plans`), so two forms of one source, which
  have different quick keys but one cache, are written one at a time.
- ``staging/``: archives extracted for datasets whose modules read files from disk (not
  those in :data:`READS_ARCHIVES`); deleted once the cache is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metaacdc.data.archives import extract, holds_archives, stat_listing
from metaacdc.data.cache import FORMAT_VERSION, META_FILE, SPLITS, CacheMeta, is_complete
from metaacdc.data.prepare_cache import PrepareResult, plan_splits, waiting_lock, write_plans
from metaacdc.data.sources.base import SplitPlan, digest_of
from metaacdc.errors import ConfigError

#: datasets whose source modules read archives in place (the others get them extracted)
READS_ARCHIVES = frozenset({"omniglot", "cifar-fs", "fc100", "cub"})
#: bumped when the way keys are computed changes, so old index entries are not trusted
KEY_VERSION = 1


def default_cache_root() -> Path:
    """Where raw sources are prepared: ``$METAACDC_CACHE``, or ``~/.cache/metaacdc``."""
    configured = os.environ.get("METAACDC_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "metaacdc"


def is_cache(path: Path) -> bool:
    """Whether ``path`` is a prepared cache (holds at least one complete split)."""
    return any(is_complete(path / split) for split in SPLITS)


def quick_key(dataset: str, source: Path, image_size: int | None, options: dict[str, Any]) -> str:
    """The cheap identity of preparing ``source``: dataset, settings, and the names, sizes
    and modification times of its files (relative to the source)."""
    settings = [KEY_VERSION, FORMAT_VERSION, dataset, image_size, sorted(options.items())]
    return digest_of([*settings, stat_listing(source)])


def content_key(dataset: str, plans: Sequence[SplitPlan]) -> str:
    """The identity of a cache: its splits' fingerprints (names and sizes of the files read
    and every setting), whatever the form or place of the source."""
    return digest_of([KEY_VERSION, FORMAT_VERSION, dataset, [p.fingerprint for p in plans]])


def ensure_cache(
    dataset: str,
    source: Path | str,
    image_size: int | None = None,
    *,
    cache_root: Path | str | None = None,
    progress: bool = True,
    **options: Any,
) -> Path:
    """The cache of ``source`` prepared with these settings: found again when it exists,
    otherwise written (with progress bars) into a content-keyed folder under the cache root.

    Args:
        dataset: the source name (``"omniglot"``, ``"miniimagenet"``, ...).
        source: a zip/tar archive, an extracted folder, or a folder holding them.
        image_size: target side; ``None`` for the dataset's default.
        cache_root: where caches live; default :func:`default_cache_root`.
        progress: progress bars and a line saying a cache is being prepared.
        **options: the dataset's preparation options (``protocol``, ``rotations``, ...).

    Returns:
        The cache folder, holding complete ``train``, ``val`` and ``test`` splits.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ConfigError: the source is not one the dataset accepts (the dataset's one-line
            error), or an option is not valid.
    """
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise FileNotFoundError(f"{source}: --data path not found")
    root = Path(cache_root if cache_root is not None else default_cache_root())
    root = root.expanduser().resolve()
    quick = quick_key(dataset, source, image_size, options)
    found = _lookup(root, quick)
    if found is not None:
        return found
    (root / "locks").mkdir(parents=True, exist_ok=True)
    with waiting_lock(root / "locks" / f"{quick}.lock", f"{dataset} from {source}", progress):
        found = _lookup(root, quick)  # prepared by the process we waited for
        if found is not None:
            return found
        staging = root / "staging" / f"{quick[:16]}-{os.getpid()}"
        with _readable(dataset, source, staging, progress) as path:
            plans = _plan(dataset, source, path, image_size, SPLITS, options)
            key = content_key(dataset, plans)[:16]
            cache = root / f"{dataset}-{plans[0].image_size}px-{key}"
            if progress and not all(is_complete(cache / p.split) for p in plans):
                print(f"preparing {dataset} from {source} in {cache} (first use)", file=sys.stderr)
            write_plans(plans, cache, progress=progress)
        _remember(root, quick, cache, dataset, source)
    return cache


def _lookup(root: Path, quick: str) -> Path | None:
    """The cache the index names for ``quick``, when it is still complete."""
    try:
        entry = json.loads((root / "index" / f"{quick}.json").read_text())
        cache = root / str(entry["cache"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cache if all(is_complete(cache / split) for split in SPLITS) else None


def _remember(root: Path, quick: str, cache: Path, dataset: str, source: Path) -> None:
    """Write the index entry atomically (a reader sees the old one or the new one)."""
    index = root / "index"
    index.mkdir(parents=True, exist_ok=True)
    entry = {"cache": cache.name, "dataset": dataset, "source": str(source)}
    partial = index / f".{quick}.json.{os.getpid()}"
    partial.write_text(json.dumps(entry, indent=1, sort_keys=True))
    os.replace(partial, index / f"{quick}.json")


@contextmanager
def _readable(dataset: str, source: Path, staging: Path, progress: bool) -> Iterator[Path]:
    """``source`` as the dataset's module can read it: itself, or extracted into
    ``staging`` (removed afterwards) when it holds archives the module does not read."""
    in_place = not source.exists() or (source.is_dir() and not holds_archives(source))
    if dataset in READS_ARCHIVES or in_place:  # a missing source: the dataset's own error
        yield source
        return
    try:
        yield extract(source, staging, progress=progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_source(
    dataset: str,
    source: Path | str,
    out: Path | str,
    *,
    image_size: int | None = None,
    splits: Sequence[str] = SPLITS,
    force: bool = False,
    progress: bool = True,
    on_split: Callable[[PrepareResult], None] | None = None,
    **options: Any,
) -> list[PrepareResult]:
    """:func:`~metaacdc.data.prepare_cache.prepare` into ``out`` from a source in any
    accepted form (archives extracted to a temporary folder for datasets that read files
    from disk): ``metaacdc data prepare --out``."""
    source = Path(source).expanduser().resolve()
    staging = Path(out).resolve().parent / f".staging-{Path(out).name}-{os.getpid()}"
    with _readable(dataset, source, staging, progress) as path:
        plans = _plan(dataset, source, path, image_size, splits, options)
        return write_plans(plans, out, force=force, progress=progress, on_split=on_split)


def _plan(
    dataset: str,
    source: Path,
    path: Path,
    image_size: int | None,
    splits: Sequence[str],
    options: dict[str, Any],
) -> list[SplitPlan]:
    """Plans for ``splits``, from ``path`` or, failing that, from the folder it wraps (an
    archive holding ``name/<dataset files>``, a download folder holding one folder).

    Raises:
        ConfigError, FileNotFoundError: the dataset's error for ``path``, followed by the
            one for the wrapped folder when that failed too; naming ``source``, not the
            temporary folder, when ``path`` is an extracted copy.
    """
    candidate, errors = path, []
    while True:
        try:
            return plan_splits(dataset, candidate, image_size, splits, **options)
        except (ConfigError, FileNotFoundError) as error:
            errors.append(error)
        inner = [p for p in candidate.iterdir() if p.name[:1] != "."] if candidate.is_dir() else []
        if len(inner) != 1 or not inner[0].is_dir():
            break
        candidate = inner[0]
    first, last = errors[0], errors[-1]
    message = str(first) if last is first else f"{first} (and inside it: {last})"
    if path != source:  # name what the user gave, not the temporary folder
        message = f"{source} (extracted): {message}"
    raise type(first)(message) from last


def describe_cache(cache: Path) -> dict[str, Any]:
    """What a run records of the cache it used: its folder and each split's checksums."""
    splits = {}
    for split in SPLITS:
        if is_complete(cache / split):
            meta = CacheMeta.from_file(cache / split / META_FILE)
            splits[split] = {
                "images_sha256": meta.images_sha256,
                "source_sha256": meta.source_sha256,
                "fingerprint": meta.fingerprint,
                "num_images": meta.num_images,
                "num_classes": len(meta.class_names),
                "image_size": meta.image_size,
            }
    return {"cache": str(cache), "splits": splits}
