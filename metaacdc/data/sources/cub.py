"""CUB-200-2011 (Wah et al. 2011) with the class split CloserLook uses.

``root`` may be ``CUB_200_2011.tgz`` itself, a folder holding it, the extracted
``CUB_200_2011/`` folder (``images/<class>/*.jpg``), a folder holding that, or the
``images/`` folder itself (archives are read in place by :mod:`metaacdc.data.archives`). The
200 class folders must all be present; their split is the shipped
``resources/cub/split.csv`` (CloserLook's rule: classes sorted by name, index ``i % 2 == 0``
train, ``i % 4 == 1`` val, ``i % 4 == 3`` test: 100/50/50 classes). Every image of a class is
used, in sorted filename order; files starting with ``.`` are ignored, as CloserLook does.
Images are converted to RGB (a few CUB images are grayscale) and resized to a square (84 px
by default); an archive and its extracted folder give byte-identical caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metaacdc.data import archives
from metaacdc.data.archives import SourceFile
from metaacdc.data.sources import split_tables
from metaacdc.data.sources.base import (
    RESAMPLE,
    SplitPlan,
    check_image_size,
    decode_image,
    digest_of,
)
from metaacdc.errors import ConfigError, check_choice

DEFAULT_IMAGE_SIZE = 84
TABLE = "cub"
FOLDER = "CUB_200_2011"
ARCHIVE = "CUB_200_2011.tgz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

#: one image: (class folder, filename, the file)
Listed = tuple[str, str, SourceFile]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def list_images(root: Path) -> list[Listed]:
    """Every ``images/<class>/<image>`` found at ``root`` (see the module docstring)."""
    if not root.exists():
        raise FileNotFoundError(f"{root}: CUB-200-2011 archive or folder not found")
    by_folder: dict[str, list[Listed]] = {}
    for path, file in archives.source_files(root).items():
        parts = path.split("/")
        if len(parts) >= 3 and parts[-3] == "images" and _is_image(parts[-1]):
            folder = "/".join(parts[:-2])
            by_folder.setdefault(folder, []).append((parts[-2], parts[-1], file))
    if not by_folder:
        raise ConfigError(
            f"{root}: no CUB-200-2011 images found; expected {ARCHIVE} or its extracted "
            f"{FOLDER}/images/<class>/*.jpg (see data/README.md)"
        )
    if len(by_folder) > 1:
        first, second = sorted(by_folder)[:2]
        raise ConfigError(f"{root}: holds two sets of CUB images ({first}, {second}); give one")
    return next(iter(by_folder.values()))


def _check_classes(listed: list[Listed], root: Path) -> None:
    expected = {row["class"] for row in split_tables.read_split_table(TABLE)}
    found = {entry[0] for entry in listed}
    unexpected = sorted(found - expected)
    if unexpected:
        raise ConfigError(
            f"{root}: class folder {unexpected[0]!r} is not one of the 200 CUB-200-2011 "
            f"classes ({len(unexpected)} such); expected the official CUB_200_2011 images"
        )
    missing = sorted(expected - found)
    if missing:
        raise ConfigError(
            f"{root}: {len(missing)} of the 200 CUB-200-2011 class folders are missing or "
            f"hold no images (first: {missing[0]}); the download is incomplete"
        )


def plan_splits(
    root: Path | str,
    splits: Sequence[str] = split_tables.SPLITS,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> list[SplitPlan]:
    """Plans for the CUB-200-2011 ``splits`` found at ``root``. The splits share one read
    of an archive (see :mod:`metaacdc.data.archives`)."""
    root = Path(root)
    check_image_size(image_size)
    for split in splits:
        check_choice("split", split, split_tables.SPLITS)
    listed = list_images(root)
    _check_classes(listed, root)
    return [_plan(split, listed, image_size) for split in splits]


def _plan(split: str, listed: list[Listed], image_size: int) -> SplitPlan:
    classes = set(split_tables.column_by_split(TABLE, split, "class"))
    entries = sorted((e for e in listed if e[0] in classes), key=lambda e: (e[0], e[1]))
    class_names = sorted(classes)
    index = {name: i for i, name in enumerate(class_names)}
    filenames = [f"{c}/{f}" for c, f, _ in entries]

    def read(i: int) -> tuple[np.ndarray, bytes]:
        file = entries[i][2]
        data = file.read()
        return decode_image(data, file.origin, image_size, "RGB"), data

    preprocessing = {
        "mode": "RGB",
        "resample": RESAMPLE,
        "split_table": f"resources/{TABLE}/split.csv",
        "split_table_sha256": split_tables.table_sha256(TABLE),
    }
    listing = [(name, e[2].size) for name, e in zip(filenames, entries, strict=True)]
    return SplitPlan(
        source="cub",
        split=split,
        image_size=image_size,
        channels=3,
        class_names=class_names,
        labels=np.array([index[e[0]] for e in entries], dtype=np.int64),
        filenames=filenames,
        fingerprint=digest_of(["cub", split, image_size, listing, preprocessing]),
        preprocessing=preprocessing,
        read=read,
    )
