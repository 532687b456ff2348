"""CIFAR-FS and FC100: few-shot splits of CIFAR-100 read from its "python" archive.

``root`` may be ``cifar-100-python.tar.gz`` itself, a folder holding it, the extracted
``cifar-100-python/`` folder (files ``meta``, ``train``, ``test``), or a folder holding that
(archives are read in place by :mod:`metaacdc.data.archives`, extracted or not the same
cache results). The three files are pickles (read with
:mod:`~metaacdc.data.sources.safe_pickle`): ``meta`` names the 100 classes and 20
superclasses; ``train`` and ``test`` hold ``data`` (``N x 3072`` uint8, channel-major 32 x 32),
``fine_labels``, ``coarse_labels`` and ``filenames``.

Both benchmarks use all 600 images of a class (the archive's 500 train plus 100 test images)
and differ only in which classes form each split: CIFAR-FS by class (64/16/20, Bertinetto et
al. 2019), FC100 by superclass (12/4/4 superclasses = 60/20/20 classes, Oreshkin et al. 2018).
The shipped tables ``resources/cifar_fs/split.csv`` and ``resources/fc100/split.csv`` say
which. Classes are in sorted name order, images of a class in archive order (train file,
then test file), so the same files give byte-identical caches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metaacdc.data import archives
from metaacdc.data.archives import SourceFile
from metaacdc.data.sources import safe_pickle, split_tables
from metaacdc.data.sources.base import (
    RESAMPLE,
    SplitPlan,
    check_image_size,
    digest_of,
    resize_array,
)
from metaacdc.errors import ConfigError, check_choice

SOURCES = {"cifar-fs": "cifar_fs", "fc100": "fc100"}  # source -> split table
DEFAULT_IMAGE_SIZE = 32
FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
FILES = ("meta", "train", "test")
PARTS = ("train", "test")  # the archive files whose images are merged per class
NATIVE_SIZE = 32
EXPECTED_CLASSES = {"train": 60, "val": 20, "test": 20}  # FC100: 5 classes per superclass


@dataclass(frozen=True)
class Cifar100:
    """The decoded archive: names, and per part (``train``, ``test``) pixels and labels."""

    fine_names: list[str]
    coarse_names: list[str]
    data: dict[str, np.ndarray]
    fine: dict[str, np.ndarray]
    coarse: dict[str, np.ndarray]
    filenames: dict[str, list[str]]
    where: str
    listing: list[tuple[str, int]]
    digest: str


def find_files(root: Path) -> dict[str, SourceFile]:
    """``meta``, ``train`` and ``test`` of the CIFAR-100 python data at ``root`` (an archive,
    its extracted folder, or a folder holding either; read by :mod:`metaacdc.data.archives`)."""
    if not root.exists():
        raise FileNotFoundError(f"{root}: CIFAR-100 archive or folder not found")
    by_folder: dict[str, dict[str, SourceFile]] = {}
    for path, file in archives.source_files(root).items():
        folder, _, name = path.rpartition("/")
        if name in FILES:
            by_folder.setdefault(folder, {})[name] = file
    complete = sorted(folder for folder, found in by_folder.items() if len(found) == len(FILES))
    if complete:
        return by_folder[complete[0]]
    if by_folder:
        folder, found = sorted(by_folder.items())[0]
        raise ConfigError(
            f"{root}: incomplete CIFAR-100 data: {folder} has {', '.join(sorted(found))} but "
            f"needs {', '.join(FILES)}; download {ARCHIVE} again"
        )
    raise ConfigError(
        f"{root}: no CIFAR-100 python data found; expected {ARCHIVE} or its extracted "
        f"{FOLDER}/ folder (meta, train, test); CIFAR-10 and the binary or Matlab versions "
        "are not accepted (see data/README.md)"
    )


def load_cifar100(root: Path | str) -> Cifar100:
    """Read and check the CIFAR-100 python files found at ``root`` (see :func:`find_files`)."""
    files = find_files(Path(root))
    raw = {name: files[name].read() for name in FILES}
    where = {name: files[name].origin for name in FILES}
    content = {
        name: safe_pickle.str_keys(safe_pickle.loads(raw[name], where[name]), where[name])
        for name in FILES
    }
    meta = content["meta"]
    safe_pickle.require_keys(
        meta, ("fine_label_names", "coarse_label_names"), where["meta"], "CIFAR-100 meta"
    )
    fine_names = [_text(n) for n in meta["fine_label_names"]]
    coarse_names = [_text(n) for n in meta["coarse_label_names"]]
    if len(fine_names) != 100 or len(coarse_names) != 20:
        raise ConfigError(
            f"{where['meta']}: {len(fine_names)} classes and {len(coarse_names)} superclasses, "
            "CIFAR-100 has 100 and 20 (is this CIFAR-10?)"
        )
    parts = {part: _read_part(content[part], where[part]) for part in PARTS}
    digest = hashlib.sha256(
        "".join(hashlib.sha256(raw[name]).hexdigest() for name in FILES).encode()
    ).hexdigest()
    listing = [(name, files[name].size) for name in FILES]
    return Cifar100(
        fine_names=fine_names,
        coarse_names=coarse_names,
        data={part: parts[part][0] for part in PARTS},
        fine={part: parts[part][1] for part in PARTS},
        coarse={part: parts[part][2] for part in PARTS},
        filenames={part: parts[part][3] for part in PARTS},
        where=str(root),
        listing=listing,
        digest=digest,
    )


def _read_part(
    content: dict[str, Any], name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Pixels, fine labels, coarse labels and filenames of the ``train`` or ``test`` file."""
    safe_pickle.require_keys(
        content, ("data", "fine_labels", "coarse_labels"), name, "a CIFAR-100 data file"
    )
    pixels = np.asarray(content["data"])
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"{name}: data must be N x 3072 uint8, got {pixels.dtype} {pixels.shape}")
    count = len(pixels)
    names = content.get("filenames")
    filenames = (
        [_text(n) for n in names]
        if names is not None and len(names) == count
        else [f"{i:05d}" for i in range(count)]
    )
    return (
        pixels,
        _labels(content["fine_labels"], count, 100, name, "fine_labels"),
        _labels(content["coarse_labels"], count, 20, name, "coarse_labels"),
        filenames,
    )


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _labels(values: Any, count: int, classes: int, name: str, key: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"{name}: {key} must be {count} integers, got {labels.dtype} {labels.shape}"
        )
    if count and (labels.min() < 0 or labels.max() >= classes):
        raise ConfigError(f"{name}: {key} outside 0..{classes - 1}")
    return labels.astype(np.int64)


def split_classes(source: str, split: str, archive: Cifar100) -> list[str]:
    """Class names of ``split`` under ``source``'s shipped table, checked against the archive."""
    table = SOURCES[source]
    if source == "cifar-fs":
        names = split_tables.column_by_split(table, split, "class")
        unknown = [n for n in names if n not in archive.fine_names]
        if unknown:
            raise ConfigError(
                f"{archive.where}: class {unknown[0]!r} of the CIFAR-FS split is not a class "
                "of this archive; expected the CIFAR-100 python archive"
            )
        return sorted(names)
    rows = [r for r in split_tables.read_split_table(table) if r["split"] == split]
    superclasses = set()
    for row in rows:
        index = int(row["superclass_index"])
        if archive.coarse_names[index] != row["superclass"]:
            raise ConfigError(
                f"{archive.where}: superclass {index} is {archive.coarse_names[index]!r}, the "
                f"FC100 table expects {row['superclass']!r}; expected the CIFAR-100 python archive"
            )
        superclasses.add(index)
    pairs = {
        (int(f), int(c))
        for part in PARTS
        for f, c in zip(archive.fine[part], archive.coarse[part], strict=True)
    }
    names = sorted(archive.fine_names[f] for f, c in pairs if c in superclasses)
    if len(names) != EXPECTED_CLASSES[split]:
        raise ConfigError(
            f"{archive.where}: the FC100 {split} superclasses hold {len(names)} classes here, "
            f"expected {EXPECTED_CLASSES[split]}; the archive is incomplete or altered"
        )
    return names


def plan_splits(
    source: str,
    root: Path | str,
    splits: Sequence[str] = split_tables.SPLITS,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> list[SplitPlan]:
    """Plans for ``splits`` of ``source`` (``"cifar-fs"`` or ``"fc100"``) from CIFAR-100."""
    check_choice("source", source, tuple(SOURCES))
    check_image_size(image_size)
    for split in splits:
        check_choice("split", split, split_tables.SPLITS)
    archive = load_cifar100(root)
    return [_plan(source, split, archive, image_size) for split in splits]


def _plan(source: str, split: str, archive: Cifar100, image_size: int) -> SplitPlan:
    class_names = split_classes(source, split, archive)
    fine_index = {name: i for i, name in enumerate(archive.fine_names)}
    entries: list[tuple[str, int]] = []  # (part, row) in cache order
    labels: list[int] = []
    for label, name in enumerate(class_names):
        for part in PARTS:
            rows = np.flatnonzero(archive.fine[part] == fine_index[name])
            entries += [(part, int(row)) for row in rows]
            labels += [label] * len(rows)
        if not labels or labels[-1] != label:
            raise ConfigError(f"{archive.where}: class {name!r} has no images")

    def read(i: int) -> tuple[np.ndarray, bytes]:
        part, row = entries[i]
        image = archive.data[part][row].reshape(3, NATIVE_SIZE, NATIVE_SIZE).transpose(1, 2, 0)
        if image_size != NATIVE_SIZE:
            image = resize_array(Image.fromarray(np.ascontiguousarray(image)), image_size)
        return np.ascontiguousarray(image), b""

    table = SOURCES[source]
    preprocessing = {
        "mode": "RGB",
        "resample": RESAMPLE if image_size != NATIVE_SIZE else "none (native 32 px)",
        "images": "all of a class: archive train file, then test file",
        "split_table": f"resources/{table}/split.csv",
        "split_table_sha256": split_tables.table_sha256(table),
    }
    return SplitPlan(
        source=source,
        split=split,
        image_size=image_size,
        channels=3,
        class_names=class_names,
        labels=np.array(labels, dtype=np.int64),
        filenames=[f"{part}/{archive.filenames[part][row]}" for part, row in entries],
        fingerprint=digest_of([source, split, image_size, archive.listing, preprocessing]),
        preprocessing=preprocessing,
        read=read,
        source_digest=archive.digest,
    )
