"""Checking a cache split's files against the sha256 its ``meta.json`` records, once.

:func:`verify_split` hashes ``images.u8`` and ``labels.npy`` and compares them with the
recorded checksums, then writes the stamp ``.verified.json``: for each file checked, its
checksum, size, modification and change times, inode and device. :func:`is_verified` trusts
the stamp only while all of these are unchanged, so a file written, replaced or copied since
is hashed again; the stamp is an optimisation, never a reason to accept changed bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from metaacdc.data.cache_meta import IMAGES_FILE, LABELS_FILE, META_FILE, CacheMeta
from metaacdc.errors import ConfigError

VERIFIED_FILE = ".verified.json"


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(meta: CacheMeta) -> dict[str, str]:
    """The files of a split whose sha256 ``meta`` records, with it."""
    recorded = {IMAGES_FILE: meta.images_sha256, LABELS_FILE: meta.labels_sha256}
    return {name: digest for name, digest in recorded.items() if digest}


def identity(path: Path) -> list[int]:
    """What changes when a file is written, replaced or copied: size, modification and
    change times, inode and device."""
    status = path.stat()
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev]


def is_verified(directory: Path | str, meta: CacheMeta) -> bool:
    """Whether the stamp in ``directory`` says its files were checked against ``meta``'s
    checksums and have not changed since (by :func:`identity`)."""
    directory = Path(directory)
    try:
        stamp = json.loads((directory / VERIFIED_FILE).read_text())
        return isinstance(stamp, dict) and all(
            stamp.get(name) == [digest, *identity(directory / name)]
            for name, digest in checksums(meta).items()
        )
    except (OSError, ValueError):
        return False


def verify_split(directory: Path | str, meta: CacheMeta, *, full: bool = False) -> None:
    """Check a split's ``images.u8`` and ``labels.npy`` against the sha256 ``meta`` records,
    then stamp them as checked (``.verified.json``, skipped when the folder is read-only).

    Args:
        directory: the split directory.
        meta: its :class:`CacheMeta`.
        full: hash the files even when the stamp says they were checked unchanged.

    Raises:
        ConfigError: a file's sha256 differs from the recorded one, naming the file and how
            to prepare the split again.
    """
    directory = Path(directory)
    if not full and is_verified(directory, meta):
        return
    stamp = {}
    for name, digest in checksums(meta).items():
        path = directory / name
        before = identity(path)
        if file_sha256(path) != digest:
            root = directory.parent
            origin = "" if meta.source == "synthetic" else " --root SOURCE"
            raise ConfigError(
                f"{path}: changed or damaged since the cache was prepared (its sha256 differs "
                f"from the one {META_FILE} records); prepare the split again with the options "
                f"it was prepared with: `metaacdc data prepare --source {meta.source}{origin} "
                f"--out {root} --splits {meta.split} --force` (a cache made from --data: "
                f"delete {root}, the next run prepares it again)"
            )
        if identity(path) == before:  # not written to while it was hashed
            stamp[name] = [digest, *before]
    if stamp.keys() == checksums(meta).keys():
        write_stamp(directory, stamp)


def write_stamp(directory: Path, stamp: dict[str, list[Any]]) -> None:
    """Write ``.verified.json`` atomically; a folder that cannot be written is left as it is
    (its files are then checked again at the next open)."""
    partial = directory / f"{VERIFIED_FILE}.{os.getpid()}"
    try:
        partial.write_text(json.dumps(stamp, sort_keys=True))
        os.replace(partial, directory / VERIFIED_FILE)
    except OSError:
        partial.unlink(missing_ok=True)
