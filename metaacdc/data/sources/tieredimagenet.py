"""tieredImageNet (Ren et al. 2018) in its common layouts, with the shipped class split.

Accepted under ``root`` (detected, or forced with ``layout``):

- ``"pickle"``: the caches Ren et al. distribute, ``{split}_images_png.pkl`` (a list of
  PNG-encoded 84 x 84 images, uint8 arrays) and ``{split}_labels.pkl`` (a dict with
  ``label_specific``, the class index of every image, and ``label_specific_str``, the class
  names; ``label_general``/``label_general_str`` name the categories), in ``root`` or
  ``root/tiered-imagenet/``; the ``tiered-imagenet-`` file-name prefix of the Zenodo copy is
  accepted. Read with :mod:`~metaacdc.data.sources.safe_pickle`.
- ``"folders"``: ``root/{train,val,test}/<wnid>/<image>``, as tiered-imagenet-tools writes.
- ``"imagenet"``: ``root/<wnid>/<image>``, e.g. the extracted ILSVRC-2012 training set; the
  608 tieredImageNet classes are taken from it and the rest ignored.

The class split is ``resources/tieredimagenet/split.csv`` (351/97/160 classes); class folders
must match it exactly. Classes are in sorted name order (wnids, when the labels pickle gives
names that map to wnids), images of a class in filename (or pickle) order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from metaacdc.data.sources import safe_pickle, split_tables
from metaacdc.data.sources.base import (
    RESAMPLE,
    SplitPlan,
    check_image_size,
    decode_image,
    digest_of,
    read_bytes,
)
from metaacdc.errors import ConfigError, check_choice

LAYOUTS = ("pickle", "folders", "imagenet")
DEFAULT_IMAGE_SIZE = 84
TABLE = "tieredimagenet"
IMAGES_PICKLE = "{split}_images_png.pkl"
LABELS_PICKLE = "{split}_labels.pkl"
PREFIXES = ("", "tiered-imagenet-")  # plain names, and the Zenodo copy's names
SUBFOLDER = "tiered-imagenet"
EXPECTED_CLASSES = {"train": 351, "val": 97, "test": 160}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WNID = re.compile(r"n\d{8}")


def _pickle_paths(root: Path, split: str) -> tuple[Path, Path] | None:
    """``(images, labels)`` pickles of ``split`` under ``root``, when its labels exist."""
    for folder in (root, root / SUBFOLDER):
        for prefix in PREFIXES:
            labels = folder / (prefix + LABELS_PICKLE.format(split=split))
            if labels.is_file():
                return folder / (prefix + IMAGES_PICKLE.format(split=split)), labels
    return None


def detect_layout(root: Path) -> str:
    """Which of :data:`LAYOUTS` ``root`` is in; errors list what is accepted."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: tieredImageNet folder not found")
    if any(_pickle_paths(root, s) for s in split_tables.SPLITS):
        return "pickle"
    if any((root / s).is_dir() for s in split_tables.SPLITS):
        return "folders"
    if any(WNID.fullmatch(p.name) and p.is_dir() for p in root.iterdir()):
        return "imagenet"
    raise ConfigError(
        f"{root}: no tieredImageNet layout found; expected {{train,val,test}}_images_png.pkl "
        "with {train,val,test}_labels.pkl, train/ val/ test/ wnid folders, or ImageNet wnid "
        "folders (see data/README.md)"
    )


def plan_split(
    root: Path | str, split: str, image_size: int = DEFAULT_IMAGE_SIZE, layout: str | None = None
) -> SplitPlan:
    """Plan the cache of one tieredImageNet split found under ``root``."""
    root = Path(root)
    check_image_size(image_size)
    check_choice("split", split, split_tables.SPLITS)
    layout = layout or detect_layout(root)
    check_choice("layout", layout, LAYOUTS)
    if layout == "pickle":
        return _plan_pickle(root, split, image_size)
    return _plan_folders(root, split, image_size, layout)


def _preprocessing(layout: str, **more: Any) -> dict[str, Any]:
    return {
        "layout": layout,
        "mode": "RGB",
        "resample": RESAMPLE,
        "split_table": f"resources/{TABLE}/split.csv",
        "split_table_sha256": split_tables.table_sha256(TABLE),
        **more,
    }


def _split_of(wnid: str) -> str | None:
    for row in split_tables.read_split_table(TABLE):
        if row["wnid"] == wnid:
            return row["split"]
    return None


def _plan_folders(root: Path, split: str, image_size: int, layout: str) -> SplitPlan:
    wnids = sorted(split_tables.column_by_split(TABLE, split, "wnid"))
    base = root / split if layout == "folders" else root
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: split folder not found (layout: {split}/<wnid>/images)")
    if layout == "folders":
        stray = sorted({p.name for p in base.iterdir() if p.is_dir()} - set(wnids))
        if stray:
            owner = _split_of(stray[0])
            where = f"a {owner} class" if owner else "not a tieredImageNet class"
            raise ConfigError(
                f"{base / stray[0]}: {where}, not one of the {len(wnids)} tieredImageNet "
                f"{split} classes ({len(stray)} such folders)"
            )
    missing = [w for w in wnids if not (base / w).is_dir()]
    if missing:
        raise ConfigError(
            f"{base}: {len(missing)} of the {len(wnids)} tieredImageNet {split} class folders "
            f"are missing (first: {missing[0]}); the data is incomplete"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        files = sorted(p for p in (base / wnid).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"{base / wnid}: class folder holds no images ({IMAGE_SUFFIXES})")
        paths += files
        labels += [label] * len(files)

    def read(i: int) -> tuple[np.ndarray, bytes]:
        data = read_bytes(paths[i])
        return decode_image(data, str(paths[i]), image_size, "RGB"), data

    listing = [(f"{p.parent.name}/{p.name}", p.stat().st_size) for p in paths]
    preprocessing = _preprocessing(layout)
    return SplitPlan(
        source="tieredimagenet",
        split=split,
        image_size=image_size,
        channels=3,
        class_names=wnids,
        labels=np.array(labels, dtype=np.int64),
        filenames=[name for name, _ in listing],
        fingerprint=digest_of(["tieredimagenet", split, image_size, listing, preprocessing]),
        preprocessing=preprocessing,
        read=read,
    )


def _class_names(raw: Any, count: int, split: str, labels_path: Path) -> tuple[list[str], str]:
    """Names of the ``count`` classes of a labels pickle, and where they came from."""
    if raw is None or len(raw) != count:
        return [f"class{k:03d}" for k in range(count)], "label index"
    names = [n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in raw]
    wnids = set(split_tables.column_by_split(TABLE, split, "wnid"))
    mapped = names if all(WNID.fullmatch(n) for n in names) else None
    mapped = mapped or _names_to_wnids(names, labels_path.parent, wnids)
    if mapped is None:
        seen: dict[str, int] = {}
        unique = []
        for name in names:  # ImageNet has repeated names ("crane"): keep classes apart
            seen[name] = seen.get(name, 0) + 1
            unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
        return unique, "label_specific_str"
    if len(set(mapped)) != count or set(mapped) != wnids:
        odd = sorted(set(mapped) - wnids) or sorted(wnids - set(mapped))
        raise ConfigError(
            f"{labels_path}: its classes are not the tieredImageNet {split} classes "
            f"(e.g. {odd[0] if odd else 'a repeated class'}); is this the {split} file?"
        )
    return mapped, "wnid"


def _names_to_wnids(names: list[str], folder: Path, wnids: set[str]) -> list[str] | None:
    """Class names mapped to wnids with ``synsets.txt`` and ``class_names.txt`` (parallel,
    one line per ImageNet class, shipped beside the pickles), when each maps to one wnid of
    the split; otherwise ``None``."""
    for prefix in PREFIXES:
        synsets, texts = folder / f"{prefix}synsets.txt", folder / f"{prefix}class_names.txt"
        if synsets.is_file() and texts.is_file():
            candidates: dict[str, set[str]] = {}
            pairs = zip(texts.read_text().splitlines(), synsets.read_text().splitlines())
            for text, wnid in pairs:
                if wnid.strip() in wnids:
                    candidates.setdefault(text.strip(), set()).add(wnid.strip())
            if all(len(candidates.get(name, ())) == 1 for name in names):
                return [next(iter(candidates[name])) for name in names]
    return None


def _load_labels(path: Path, split: str) -> tuple[np.ndarray, Any]:
    content = safe_pickle.str_keys(safe_pickle.load(path), str(path))
    safe_pickle.require_keys(
        content, ("label_specific",), str(path), "a tieredImageNet labels pickle"
    )
    labels = np.asarray(content["label_specific"])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or not len(labels):
        raise ConfigError(f"{path}: label_specific must be a non-empty list of class indices")
    labels = labels.astype(np.int64)
    count = int(labels.max()) + 1
    present = np.bincount(labels.clip(min=0), minlength=count)
    if labels.min() < 0 or (present == 0).any():
        raise ConfigError(f"{path}: label_specific must use every class index 0..{count - 1}")
    if count != EXPECTED_CLASSES[split]:
        raise ConfigError(
            f"{path}: {count} classes, the tieredImageNet {split} split has "
            f"{EXPECTED_CLASSES[split]}; is this the {split} file, and complete?"
        )
    return labels, content.get("label_specific_str")


def _plan_pickle(root: Path, split: str, image_size: int) -> SplitPlan:
    paths = _pickle_paths(root, split)
    if paths is None:
        raise FileNotFoundError(f"{root / LABELS_PICKLE.format(split=split)}: not found")
    images_path, labels_path = paths
    if not images_path.is_file():
        raise FileNotFoundError(f"{images_path}: not found (beside {labels_path.name})")
    labels, raw_names = _load_labels(labels_path, split)
    names, named_by = _class_names(raw_names, int(labels.max()) + 1, split, labels_path)
    class_names = sorted(names)
    new_label = np.array([class_names.index(n) for n in names], dtype=np.int64)[labels]
    order = np.argsort(new_label, kind="stable")  # by class name, pickle order within a class
    blobs: list[Any] = []

    def read(i: int) -> tuple[np.ndarray, bytes]:
        if not blobs:  # the images pickle is large: loaded on the first image asked for
            blobs.extend(_load_images(images_path, len(labels)))
        k = int(order[i])
        data = _png_bytes(blobs[k], images_path, k)
        return decode_image(data, f"{images_path}[{k}]", image_size, "RGB"), data

    preprocessing = _preprocessing("pickle", class_names_from=named_by)
    files = [(p.name, p.stat().st_size) for p in (images_path, labels_path)]
    return SplitPlan(
        source="tieredimagenet",
        split=split,
        image_size=image_size,
        channels=3,
        class_names=class_names,
        labels=new_label[order],
        filenames=None,
        fingerprint=digest_of(["tieredimagenet", split, image_size, files, preprocessing]),
        preprocessing=preprocessing,
        read=read,
    )


def _load_images(path: Path, count: int) -> list[Any]:
    images = safe_pickle.load(path)
    if not isinstance(images, list | tuple | np.ndarray) or len(images) != count:
        found = len(images) if isinstance(images, list | tuple | np.ndarray) else "no list"
        raise ConfigError(
            f"{path}: expected a list of {count} PNG-encoded images (one per label), found {found}"
        )
    return list(images)


def _png_bytes(blob: Any, path: Path, index: int) -> bytes:
    """The encoded image bytes of one pickle entry (a uint8 array, or bytes)."""
    if isinstance(blob, bytes | bytearray):
        return bytes(blob)
    if isinstance(blob, np.ndarray) and blob.dtype == np.uint8:
        return blob.tobytes()
    raise ConfigError(f"{path}[{index}]: expected PNG bytes as a uint8 array, found {type(blob)}")
