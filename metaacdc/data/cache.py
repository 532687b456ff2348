"""The on-disk episode cache: one directory per split, written atomically, opened memory-mapped.

A split directory holds

- ``images.u8``: raw ``uint8`` pixels, shape ``N x H x W x C`` (C-order, no header);
- ``labels.npy``: ``int64`` class index of every image;
- ``meta.json``: :class:`CacheMeta` (format version, source, class names, filenames, pixel
  statistics, checksums and every preprocessing choice), with a sha256 of its own content;
- ``.verified.json``: which files were last checked against the checksums (written by
  :func:`verify_split`; an optimisation only, never trusted for files that changed since).

``meta.json`` is written last, inside a temporary directory that is then renamed into place,
so a directory with a ``meta.json`` is complete and an interrupted write leaves none.

A split is checked when it is first opened (:func:`open_split`): ``images.u8`` and
``labels.npy`` must have the sha256 ``meta.json`` records, so bytes changed in place (a bad
disk, a stray write) are refused instead of trained on. The stamp ``.verified.json``
remembers each file checked by its size, modification and change times, inode and device,
so later opens (every training or evaluation start, every process of a ``torchrun`` job)
skip the hashing until
a file changes; a cache copied elsewhere is checked once more. Hashing a miniImageNet-sized
split (60,000 images of 84x84x3, 1.27 GB) takes about 1 s on the development machine
(``data/README.md``, measured with ``scripts/time_cache_check.py``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from metaacdc.data.cache_meta import FORMAT_VERSION, IMAGES_FILE, LABELS_FILE, META_FILE, CacheMeta
from metaacdc.data.integrity import (
    VERIFIED_FILE,
    checksums,
    file_sha256,
    identity,
    is_verified,
    verify_split,
    write_stamp,
)
from metaacdc.errors import ConfigError, check_choice

__all__ = [  # the cache's names, wherever they are defined
    "FORMAT_VERSION",
    "IMAGES_FILE",
    "LABELS_FILE",
    "META_FILE",
    "SPLITS",
    "VERIFIED_FILE",
    "VERIFY",
    "CacheMeta",
    "CachedSplit",
    "SplitWriter",
    "file_sha256",
    "is_complete",
    "is_verified",
    "open_split",
    "pixel_stats",
    "remove_stale_temporaries",
    "split_dir",
    "verify_split",
]

SPLITS = ("train", "val", "test")
#: ``open_split``'s checks of the files against their recorded checksums
VERIFY = ("once", "always", "never")


class CachedSplit:
    """One split's images and labels in memory or memory-mapped: what the samplers consume.

    Args:
        images: ``uint8`` array ``N x H x W x C``.
        labels: integer array ``N`` of class indices into ``meta.class_names``.
        meta: the split's :class:`CacheMeta`.
        path: the split directory when the arrays are memory-mapped from disk; pickling
            then reopens the files instead of copying the pixels (DataLoader workers).
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, meta: CacheMeta, path: Path | None = None
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ConfigError(
                f"images must be uint8 N x H x W x C, got {images.dtype} {images.shape}"
            )
        if len(labels) != len(images):
            raise ConfigError(f"{len(labels)} labels for {len(images)} images")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.meta = meta
        self.path = path
        self.class_indices: list[np.ndarray] = _indices_by_class(self.labels, len(meta.class_names))

    @property
    def class_names(self) -> list[str]:
        """Class name of each class index."""
        return self.meta.class_names

    @property
    def num_classes(self) -> int:
        """Number of classes in the split."""
        return len(self.meta.class_names)

    @property
    def image_size(self) -> int:
        """Side of the square images in pixels."""
        return self.meta.image_size

    @property
    def channels(self) -> int:
        """Number of channels (3 RGB, 1 grayscale)."""
        return self.meta.channels

    def describe(self) -> str:
        """Where the split comes from, for error messages."""
        where = str(self.path) if self.path is not None else "in memory"
        return f"{self.meta.source} {self.meta.split} split ({where})"

    def __len__(self) -> int:
        return len(self.images)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["images"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.images is None:
            assert self.path is not None
            self.images = _map_images(self.path / IMAGES_FILE, self.meta)


def _indices_by_class(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"labels outside 0..{num_classes - 1}")
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(num_classes)]


def _map_images(path: Path, meta: CacheMeta) -> np.ndarray:
    shape = (meta.num_images, meta.image_size, meta.image_size, meta.channels)
    expected = int(np.prod(shape))
    actual = path.stat().st_size if path.exists() else None
    if actual != expected:
        raise ConfigError(
            f"{path}: expected {expected} bytes for {shape} images, found "
            f"{'no file' if actual is None else f'{actual} bytes'}; the cache is damaged, "
            "rerun `metaacdc data prepare ... --force`"
        )
    if expected == 0:
        return np.zeros(shape, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)


def split_dir(root: Path | str, split: str) -> Path:
    """The directory of ``split`` inside a cache root."""
    return Path(root) / split


def is_complete(directory: Path | str) -> bool:
    """Whether ``directory`` holds a completely written split (its ``meta.json`` exists)."""
    return (Path(directory) / META_FILE).is_file()


def open_split(
    directory: Path | str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    verify: Literal["once", "always", "never"] = "once",
) -> CachedSplit:
    """Open a split directory memory-mapped, read-only.

    Args:
        directory: a split directory written by :class:`SplitWriter` (``<cache>/<split>``).
        image_size: if given, refuse a cache of another image size.
        channels: if given, refuse a cache with another number of channels.
        verify: check ``images.u8`` and ``labels.npy`` against the sha256 ``meta.json``
            records (:func:`verify_split`): ``"once"`` unless the stamp says these very
            files were checked before, ``"always"`` (``metaacdc data info --verify``), or
            ``"never"`` (describing a cache without reading its pixels).

    Raises:
        FileNotFoundError: the directory does not exist.
        ConfigError: the split is incomplete, damaged (a file missing, of the wrong size, or
            whose checksum differs from the recorded one), of another format version, or of
            another image size / channel count than asked for.
    """
    check_choice("verify", verify, VERIFY)
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: no such cache directory; create it with `metaacdc data prepare`"
        )
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise ConfigError(
            f"{directory}: incomplete cache (no {META_FILE}); a `metaacdc data prepare` was "
            "interrupted or this is not a cache split; rerun prepare"
        )
    meta = CacheMeta.from_file(meta_path)
    if image_size is not None and meta.image_size != image_size:
        raise ConfigError(
            f"{meta_path}: cache holds {meta.image_size}px images, {image_size}px were asked "
            f"for; prepare a cache with --image-size {image_size}"
        )
    if channels is not None and meta.channels != channels:
        raise ConfigError(f"{meta_path}: cache has {meta.channels} channels, not {channels}")
    images = _map_images(directory / IMAGES_FILE, meta)
    if not (directory / LABELS_FILE).is_file():
        raise ConfigError(
            f"{directory / LABELS_FILE}: missing; the cache is damaged, rerun "
            "`metaacdc data prepare ... --force`"
        )
    if verify != "never":
        verify_split(directory, meta, full=verify == "always")
    try:
        labels = np.load(directory / LABELS_FILE)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{directory / LABELS_FILE}: unreadable labels ({error})") from error
    if labels.shape != (meta.num_images,):
        raise ConfigError(
            f"{directory / LABELS_FILE}: {labels.shape[0]} labels for "
            f"{meta.num_images} images; rerun prepare with --force"
        )
    return CachedSplit(images, labels, meta, path=directory)


def pixel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of ``uint8`` images scaled to ``[0, 1]``."""
    channels = images.shape[-1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float64).reshape(-1, channels)
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
        count += block.shape[0]
    if count == 0:
        return [0.0] * channels, [1.0] * channels
    mean = total / count
    var = np.maximum(squares / count - mean**2, 0.0)
    return (mean / 255.0).tolist(), (np.sqrt(var) / 255.0).tolist()


class SplitWriter:
    """Writes one split into a temporary directory and renames it into place on :meth:`commit`.

    Use as a context manager: leaving the block without :meth:`commit` (an error, Ctrl-C)
    deletes the temporary directory, so no half-written split looks complete.
    """

    def __init__(self, directory: Path, shape: tuple[int, int, int, int]) -> None:
        self.directory = Path(directory)
        self.shape = shape
        self.tmp = self.directory.with_name(f".{self.directory.name}.tmp-{os.getpid()}")
        self.images: np.ndarray | None = None

    def __enter__(self) -> SplitWriter:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        if int(np.prod(self.shape)) > 0:
            self.images = np.memmap(
                self.tmp / IMAGES_FILE, dtype=np.uint8, mode="w+", shape=self.shape
            )
        else:
            (self.tmp / IMAGES_FILE).write_bytes(b"")
            self.images = np.zeros(self.shape, dtype=np.uint8)
        return self

    def __exit__(self, *exc: object) -> None:
        self.images = None
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, labels: np.ndarray, meta_without_stats: dict[str, Any]) -> CacheMeta:
        """Flush pixels, write labels, statistics and ``meta.json`` (last), then rename."""
        assert self.images is not None, "commit() outside the with-block"
        if isinstance(self.images, np.memmap):
            self.images.flush()
        mean, std = pixel_stats(self.images)
        np.save(self.tmp / LABELS_FILE, np.asarray(labels, dtype=np.int64))
        identities = {name: identity(self.tmp / name) for name in (IMAGES_FILE, LABELS_FILE)}
        meta = CacheMeta(
            **meta_without_stats,
            mean=mean,
            std=std,
            images_sha256=file_sha256(self.tmp / IMAGES_FILE),
            labels_sha256=file_sha256(self.tmp / LABELS_FILE),
        )
        meta = replace(meta, meta_sha256=meta.content_sha256())
        (self.tmp / META_FILE).write_text(meta.to_json())
        self.images = None
        old = self.directory.with_name(f".{self.directory.name}.old-{os.getpid()}")
        if self.directory.exists():
            self.directory.rename(old)
        self.tmp.rename(self.directory)
        if old.exists():
            shutil.rmtree(old)
        # the checksums were just computed from these very files: the first open skips them
        if all(identity(self.directory / n) == i for n, i in identities.items()):
            stamp = {n: [d, *identities[n]] for n, d in checksums(meta).items()}
            write_stamp(self.directory, stamp)
        return meta


def remove_stale_temporaries(root: Path, names: Iterable[str] = SPLITS) -> None:
    """Delete temporary directories left by an interrupted prepare in ``root``."""
    if not root.is_dir():
        return
    for name in names:
        for stale in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
