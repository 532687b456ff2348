"""``prepare``: turn a source into cached splits once; resumable, never silently overwriting."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from tqdm import tqdm

from metaacdc.data.cache import (
    FORMAT_VERSION,
    META_FILE,
    SPLITS,
    CacheMeta,
    SplitWriter,
    is_complete,
    remove_stale_temporaries,
    split_dir,
    verify_split,
)
from metaacdc.data.sources import benchmarks
from metaacdc.data.sources.base import SplitPlan, check_image_size
from metaacdc.errors import ConfigError, check_choice

SOURCES = ("miniimagenet", "omniglot", "synthetic", *benchmarks.DEFAULT_IMAGE_SIZES)
#: held beside a cache folder (``.<name>.prepare.lock``) while splits are written into it
PREPARE_LOCK = ".{name}.prepare.lock"


@dataclass(frozen=True)
class PrepareResult:
    """Outcome for one split: ``"written"``, ``"kept"`` (already complete, matching and
    intact) or ``"repaired"`` (complete and matching, but its files no longer had their
    recorded checksums: written again)."""

    split: str
    directory: Path
    status: str
    meta: CacheMeta


def plan_splits(
    source: str, root: Path | None, image_size: int | None, splits: Sequence[str], **options: Any
) -> list[SplitPlan]:
    """Plans for ``splits`` of ``source`` (see the ``sources`` modules for ``options``)."""
    check_choice("source", source, SOURCES)
    for split in splits:
        check_choice("split", split, SPLITS)
    if image_size is not None:  # 0 is a mistake, not "the default"
        check_image_size(image_size)
    if source == "synthetic":
        from metaacdc.data.sources import synthetic

        size = image_size if image_size is not None else synthetic.DEFAULT_IMAGE_SIZE
        return [synthetic.plan_split(s, image_size=size, **options) for s in splits]
    if root is None:
        raise ConfigError(f"--root is required for source {source!r}: the folder of its files")
    if source in benchmarks.DEFAULT_IMAGE_SIZES:
        return benchmarks.plan_splits(source, root, splits, image_size, **options)
    if source == "miniimagenet":
        from metaacdc.data.sources import miniimagenet

        size = 84 if image_size is None else image_size
        return [miniimagenet.plan_split(root, s, image_size=size, **options) for s in splits]
    from metaacdc.data.sources import omniglot

    size = 28 if image_size is None else image_size
    return omniglot.plan_splits(root, splits, image_size=size, **options)


def prepare(
    source: str,
    out: Path | str,
    *,
    root: Path | str | None = None,
    image_size: int | None = None,
    splits: Sequence[str] = SPLITS,
    force: bool = False,
    progress: bool = True,
    on_split: Callable[[PrepareResult], None] | None = None,
    **options: Any,
) -> list[PrepareResult]:
    """Write the cache of ``source`` under ``out/<split>/``.

    Splits already complete with the same fingerprint are kept (resume after an interrupt),
    once their files are checked against their recorded checksums; damaged ones are written
    again. A complete split built from other inputs or parameters is refused unless
    ``force``.

    Args:
        source: one of :data:`SOURCES` (``"miniimagenet"``, ``"omniglot"``, ``"synthetic"``,
            ``"cifar-fs"``, ``"fc100"``, ``"cub"``, ``"tieredimagenet"``).
        out: cache root directory.
        root: folder of the source files, or for CIFAR-FS, FC100 and CUB also their
            archive (not used by ``"synthetic"``).
        image_size: target side; defaults 84 (miniImageNet, synthetic, CUB,
            tieredImageNet), 32 (CIFAR-FS, FC100) and 28 (Omniglot).
        splits: which splits to write.
        force: overwrite complete splits that differ.
        progress: show a progress bar per split.
        on_split: called with each split's result as soon as it is done.
        **options: source options (``layout``; ``protocol``, ``rotations``,
            ``split_seed``; ``images_per_class``, ``seed``).
    """
    plans = plan_splits(
        source, Path(root) if root is not None else None, image_size, splits, **options
    )
    return write_plans(plans, out, force=force, progress=progress, on_split=on_split)


def write_plans(
    plans: Sequence[SplitPlan],
    out: Path | str,
    *,
    force: bool = False,
    progress: bool = True,
    on_split: Callable[[PrepareResult], None] | None = None,
) -> list[PrepareResult]:
    """Write planned splits under ``out/<split>/`` (what :func:`prepare` does once planned).

    The whole write holds the lock file ``.<out name>.prepare.lock`` beside ``out`` (the
    cache folder itself holds only splits): a second process preparing the same ``out``
    waits, then keeps the splits the first one wrote, so two never write (or clean up) one
    split at once.
    """
    out = Path(out)
    for plan in plans:  # refuse before writing anything, the lock file included
        _check_overwrite(plan, split_dir(out, plan.split), force)
    out.mkdir(parents=True, exist_ok=True)
    folder = out.resolve()
    with waiting_lock(folder.with_name(PREPARE_LOCK.format(name=folder.name)), str(out), progress):
        remove_stale_temporaries(out)
        for plan in plans:  # again: another process may have written a split meanwhile
            _check_overwrite(plan, split_dir(out, plan.split), force)
        results = []
        for plan in plans:
            result = _prepare_split(plan, split_dir(out, plan.split), progress)
            results.append(result)
            if on_split is not None:
                on_split(result)
    return results


@contextmanager
def waiting_lock(path: Path, work: str, progress: bool) -> Iterator[None]:
    """Hold the file lock ``path`` while preparing ``work``; when another process holds it,
    say so (with ``progress``) and wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        if progress:
            print(f"waiting: another process is preparing {work}", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _check_overwrite(plan: SplitPlan, directory: Path, force: bool) -> None:
    if force or not directory.exists():
        return
    if not is_complete(directory):
        if any(directory.iterdir()):
            raise ConfigError(
                f"{directory}: exists but is not a cache split; choose another "
                "--out or pass --force to replace it"
            )
        return
    try:
        existing = CacheMeta.from_file(directory / META_FILE)
    except ConfigError as error:
        raise ConfigError(f"{error} (or pass --force to overwrite it)") from error
    if existing.fingerprint != plan.fingerprint:
        raise ConfigError(
            f"{directory}: holds a different cache than the one asked for "
            f"({'; '.join(differences(existing, plan))}); pass --force to overwrite it or "
            "choose another --out"
        )


def differences(existing: CacheMeta, plan: SplitPlan) -> list[str]:
    """What differs between a prepared split and the plan for one (``existing`` then
    asked for): its source, size, images, classes and preprocessing choices; when none of
    them does, the one thing left in a fingerprint, the input files' names and sizes."""

    def shown(value: Any) -> str:
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 40 else text[:37] + "..."

    found = [
        f"{name} {shown(old)} here, {shown(new)} asked for"
        for name, old, new in (
            ("source", existing.source, plan.source),
            ("image size", existing.image_size, plan.image_size),
            ("channels", existing.channels, plan.channels),
            ("images", existing.num_images, len(plan)),
            ("classes", len(existing.class_names), len(plan.class_names)),
        )
        if old != new
    ]
    if not found and existing.class_names != list(plan.class_names):
        found.append("other class names")
    before = _flat(existing.preprocessing)
    after = _flat(json.loads(json.dumps(plan.preprocessing)))  # tuples as JSON lists
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            old, new = (shown(side[key]) if key in side else "unset" for side in (before, after))
            found.append(f"{key} {old} here, {new} asked for")
    if not found and existing.filenames != (
        list(plan.filenames) if plan.filenames is not None else None
    ):
        found.append("other image files")
    return found or ["the source files' names or sizes differ"]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _prepare_split(plan: SplitPlan, directory: Path, progress: bool) -> PrepareResult:
    status = "written"
    if is_complete(directory):
        try:
            existing: CacheMeta | None = CacheMeta.from_file(directory / META_FILE)
        except ConfigError:  # damaged metadata, refused before unless --force: rewritten
            existing, status = None, "repaired"
        if existing is not None and existing.fingerprint == plan.fingerprint:
            try:
                verify_split(directory, existing)
                return PrepareResult(plan.split, directory, "kept", existing)
            except (ConfigError, OSError):  # the same inputs, damaged files: written again
                status = "repaired"
    shape = (len(plan), plan.image_size, plan.image_size, plan.channels)
    digest = hashlib.sha256()
    with SplitWriter(directory, shape) as writer:
        assert writer.images is not None
        bar = tqdm(
            range(len(plan)),
            desc=f"{plan.source} {plan.split}",
            unit="img",
            disable=not progress,
            leave=False,
        )
        for i in bar:
            image, raw = plan.read(i)
            if image.shape != shape[1:]:
                raise ConfigError(
                    f"image {i} of {plan.split} has shape {image.shape}, expected {shape[1:]}"
                )
            writer.images[i] = image
            if raw:
                digest.update(raw)
        meta = writer.commit(
            plan.labels,
            {
                "source": plan.source,
                "split": plan.split,
                "image_size": plan.image_size,
                "channels": plan.channels,
                "num_images": len(plan),
                "class_names": list(plan.class_names),
                "filenames": list(plan.filenames) if plan.filenames is not None else None,
                "source_sha256": plan.source_digest or digest.hexdigest(),
                "fingerprint": plan.fingerprint,
                "preprocessing": plan.preprocessing,
                "format_version": FORMAT_VERSION,
            },
        )
    return PrepareResult(plan.split, directory, status, meta)
