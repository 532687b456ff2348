"""miniImageNet in its three common layouts, planned into one canonical cache order.

Accepted under ``root``:

- ``"csv"``: the standard split CSVs (``filename,label``) plus the images, in ``root/images/``
  or directly in ``root``. CSVs are read from ``root/{split}.csv`` when present, else the
  copies shipped with metaacdc (Ravi & Larochelle 2017).
- ``"pickle"``: ``root/mini-imagenet-cache-{split}.pkl`` (``-validation`` accepted for val)
  holding ``image_data`` (``N x 84 x 84 x 3`` uint8) and ``class_dict`` (name -> indices),
  read with :mod:`~metaacdc.data.sources.safe_pickle` (no code from the file runs).
- ``"folders"``: ``root/{split}/{class name}/{image files}``.

Whatever the layout, classes are in sorted name order and images of a class in sorted
filename order, so the same images give byte-identical caches. A pickle carries no
filenames; they are inferred from the split CSV (``root/{split}.csv``, else the shipped one;
the pickles were built in CSV order) when its classes and counts match, so frozen manifests
work with it too.
"""

from __future__ import annotations

import csv
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metaacdc.data.sources import safe_pickle
from metaacdc.data.sources.base import (
    RESAMPLE,
    SplitPlan,
    check_image_size,
    decode_image,
    digest_of,
    read_bytes,
    resize_array,
)
from metaacdc.errors import ConfigError, check_choice

LAYOUTS = ("csv", "pickle", "folders")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"


def shipped_split_csv(split: str) -> Path:
    """Path of the split CSV shipped inside the package (``train``, ``val`` or ``test``)."""
    check_choice("split", split, ("train", "val", "test"))
    return Path(str(resources.files("metaacdc") / "resources" / "miniimagenet" / f"{split}.csv"))


def read_split_csv(path: Path) -> list[tuple[str, str]]:
    """Rows ``(filename, label)`` of a split CSV; ConfigError naming the file if malformed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split CSV not found")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [cell.strip() for cell in rows[0]] != ["filename", "label"]:
        raise ConfigError(f"{path}: expected the header 'filename,label'")
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0] or not row[1]:
            raise ConfigError(f"{path}: line {number} is not 'filename,label': {row!r}")
        out.append((row[0], row[1]))
    return out


def _pickle_path(root: Path, split: str) -> Path:
    """``mini-imagenet-cache-{split}.pkl``; learn2learn names the val one ``-validation``."""
    path = root / PICKLE_NAME.format(split=split)
    alternative = root / PICKLE_NAME.format(split="validation")
    return alternative if split == "val" and not path.is_file() and alternative.is_file() else path


def detect_layout(root: Path) -> str:
    """Which of :data:`LAYOUTS` ``root`` is in; errors list what is accepted."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: miniImageNet folder not found")
    if any(_pickle_path(root, s).is_file() for s in ("train", "val", "test")):
        return "pickle"
    if any((root / s).is_dir() for s in ("train", "val", "test")):
        return "folders"
    if (root / "images").is_dir() or any(root.glob("*.jpg")):
        return "csv"
    raise ConfigError(
        f"{root}: no miniImageNet layout found; expected images/ (with the split CSVs), "
        f"{PICKLE_NAME.format(split='{train,val,test}')}, or train/ val/ test/ class folders "
        "(see data/README.md)"
    )


def plan_split(
    root: Path | str, split: str, image_size: int = 84, layout: str | None = None
) -> SplitPlan:
    """Plan the cache of one miniImageNet split found under ``root``."""
    root = Path(root)
    check_image_size(image_size)
    check_choice("split", split, ("train", "val", "test"))
    layout = layout or detect_layout(root)
    check_choice("layout", layout, LAYOUTS)
    if layout == "csv":
        return _plan_csv(root, split, image_size)
    if layout == "pickle":
        return _plan_pickle(root, split, image_size)
    return _plan_folders(root, split, image_size)


def _canonical(entries: list[tuple[str, str, Any]]) -> tuple[list[str], np.ndarray, list[Any]]:
    """Sort ``(label, filename, handle)`` entries; return class names, labels, entries."""
    entries = sorted(entries, key=lambda e: (e[0], e[1]))
    class_names = sorted({label for label, _, _ in entries})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[label] for label, _, _ in entries], dtype=np.int64)
    return class_names, labels, entries


def _preprocessing(layout: str, **more: Any) -> dict[str, Any]:
    return {"layout": layout, "resample": RESAMPLE, "mode": "RGB", **more}


def _plan_csv(root: Path, split: str, image_size: int) -> SplitPlan:
    csv_path = _split_csv(root, split)
    image_dir = root / "images" if (root / "images").is_dir() else root
    rows = read_split_csv(csv_path)
    sizes = []
    for number, (filename, _) in enumerate(rows, start=2):
        path = image_dir / filename
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{csv_path}: line {number} names {filename}, but {path} does not exist"
            ) from error
    class_names, labels, entries = _canonical([(lab, name, None) for name, lab in rows])
    filenames = [name for _, name, _ in entries]
    csv_sha = hashlib.sha256(csv_path.read_bytes()).hexdigest()

    def read(i: int) -> tuple[np.ndarray, bytes]:
        path = image_dir / filenames[i]
        data = read_bytes(path)
        return decode_image(data, str(path), image_size, "RGB"), data

    return SplitPlan(
        source="miniimagenet",
        split=split,
        image_size=image_size,
        channels=3,
        class_names=class_names,
        labels=labels,
        filenames=filenames,
        fingerprint=digest_of(
            [
                "miniimagenet",
                "csv",
                split,
                image_size,
                csv_sha,
                sorted(zip([r[0] for r in rows], sizes, strict=True)),
            ]
        ),
        preprocessing=_preprocessing("csv", split_csv_sha256=csv_sha),
        read=read,
    )


def _plan_folders(root: Path, split: str, image_size: int) -> SplitPlan:
    split_root = root / split
    if not split_root.is_dir():
        raise FileNotFoundError(
            f"{split_root}: split folder not found (layout: train/ val/ "
            "test/ holding one folder per class)"
        )
    entries: list[tuple[str, str, Any]] = []
    for class_dir in sorted(p for p in split_root.iterdir() if p.is_dir()):
        files = [p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise ConfigError(f"{class_dir}: class folder holds no images ({IMAGE_SUFFIXES})")
        entries += [(class_dir.name, p.name, p) for p in files]
    if not entries:
        raise ConfigError(f"{split_root}: no class folders found")
    class_names, labels, entries = _canonical(entries)
    paths: list[Path] = [e[2] for e in entries]

    def read(i: int) -> tuple[np.ndarray, bytes]:
        data = read_bytes(paths[i])
        return decode_image(data, str(paths[i]), image_size, "RGB"), data

    listing = [(f"{p.parent.name}/{p.name}", p.stat().st_size) for p in paths]
    return SplitPlan(
        source="miniimagenet",
        split=split,
        image_size=image_size,
        channels=3,
        class_names=class_names,
        labels=labels,
        filenames=[e[1] for e in entries],
        fingerprint=digest_of(["miniimagenet", "folders", split, image_size, listing]),
        preprocessing=_preprocessing("folders"),
        read=read,
    )


def _load_pickle(path: Path) -> tuple[np.ndarray, dict[str, list[int]], str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pickle cache not found")
    data = path.read_bytes()
    # refuses anything but plain data: loading never runs code from the file
    content = safe_pickle.str_keys(safe_pickle.loads(data, str(path)), str(path))
    try:
        images = np.asarray(content["image_data"])
        class_dict = {str(k): [int(i) for i in v] for k, v in content["class_dict"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigError(
            f"{path}: not a miniImageNet pickle cache with image_data and class_dict ({error})"
        ) from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(
            f"{path}: image_data must be N x H x W x 3 uint8, got {images.dtype} {images.shape}"
        )
    for name, indices in class_dict.items():
        if indices and (min(indices) < 0 or max(indices) >= len(images)):
            raise ConfigError(f"{path}: class_dict[{name!r}] points outside image_data")
    return images, class_dict, hashlib.sha256(data).hexdigest()


def _split_csv(root: Path, split: str) -> Path:
    """``root/{split}.csv`` when the user supplies one, else the shipped copy."""
    local = root / f"{split}.csv"
    return local if local.is_file() else shipped_split_csv(split)


def _inferred_filenames(csv_path: Path, class_dict: dict[str, list[int]]) -> dict[str, list[str]]:
    """Filenames of each class from a split CSV, when its classes and counts match."""
    by_class: dict[str, list[str]] = {}
    for filename, label in read_split_csv(csv_path):
        by_class.setdefault(label, []).append(filename)
    if set(by_class) != set(class_dict) or any(
        len(by_class[c]) != len(class_dict[c]) for c in class_dict
    ):
        return {}
    return {c: sorted(names) for c, names in by_class.items()}


def _plan_pickle(root: Path, split: str, image_size: int) -> SplitPlan:
    path = _pickle_path(root, split)
    images, class_dict, sha = _load_pickle(path)
    names = _inferred_filenames(_split_csv(root, split), class_dict)
    entries = []
    for label, indices in class_dict.items():
        for k, index in enumerate(indices):
            key = names[label][k] if names else f"{k:08d}"
            entries.append((label, key, index))
    class_names, labels, entries = _canonical(entries)
    order = [e[2] for e in entries]

    def read(i: int) -> tuple[np.ndarray, bytes]:
        array = images[order[i]]
        if array.shape[:2] != (image_size, image_size):
            array = resize_array(Image.fromarray(array, "RGB"), image_size)
        return np.ascontiguousarray(array), b""

    filenames_note = "inferred from split CSV order" if names else "unknown"
    return SplitPlan(
        source="miniimagenet",
        split=split,
        image_size=image_size,
        channels=3,
        class_names=class_names,
        labels=labels,
        filenames=[e[1] for e in entries] if names else None,
        fingerprint=digest_of(
            ["miniimagenet", "pickle", split, image_size, path.name, path.stat().st_size]
        ),
        preprocessing=_preprocessing("pickle", filenames=filenames_note),
        read=read,
        source_digest=sha,
    )
