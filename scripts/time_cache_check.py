"""Cost of checking a cache split against its recorded checksums (``open_split``).

Writes a fake miniImageNet-sized train split (60,000 random 84 x 84 x 3 uint8 images,
1.27 GB, and its labels and ``meta.json``) into a temporary folder, then times the first open
(hashes ``images.u8`` and ``labels.npy``), a second open (the stamp says nothing changed),
and a full check (``metaacdc data info --verify``) after asking the OS to drop the file from
its page cache; the folder is deleted afterwards.

    .venv/bin/python scripts/time_cache_check.py [--images 60000] [--size 84] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from metaacdc.data.cache import (
    IMAGES_FILE,
    LABELS_FILE,
    META_FILE,
    CacheMeta,
    file_sha256,
    open_split,
)


def write_split(split: Path, images: int, size: int) -> None:
    """A split of ``images`` random ``size``-px RGB images over 64 classes."""
    split.mkdir(parents=True)
    block = np.random.default_rng(0).integers(0, 256, 1 << 24, dtype=np.uint8).tobytes()
    left = images * size * size * 3
    with open(split / IMAGES_FILE, "wb") as stream:
        while left:
            stream.write(block[: min(left, len(block))])
            left -= min(left, len(block))
    np.save(split / LABELS_FILE, np.arange(images) % 64)
    meta = CacheMeta(
        source="miniimagenet",
        split="train",
        image_size=size,
        channels=3,
        num_images=images,
        class_names=[f"class{c}" for c in range(64)],
        filenames=None,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        source_sha256="",
        fingerprint="",
        images_sha256=file_sha256(split / IMAGES_FILE),
        labels_sha256=file_sha256(split / LABELS_FILE),
    )
    (split / META_FILE).write_text(meta.to_json())


def timed(label: str, action: Callable[[], object]) -> None:
    """Run ``action`` once and print how long it took."""
    start = time.perf_counter()
    action()
    print(f"{label}: {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--dir", type=Path, default=None, help="where the fake split goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        split = Path(folder) / "train"
        write_split(split, args.images, args.size)
        gigabytes = (split / IMAGES_FILE).stat().st_size / 1e9
        print(f"{args.images} images of {args.size}x{args.size}x3: {gigabytes:.2f} GB")
        timed("first open (hashes the files)", lambda: open_split(split))
        timed("second open (stamp, files unchanged)", lambda: open_split(split))
        descriptor = os.open(split / IMAGES_FILE, os.O_RDONLY)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(descriptor)
        timed(
            "full check, file dropped from the page cache",
            lambda: open_split(split, verify="always"),
        )


if __name__ == "__main__":
    main()
