"""A tiny fake miniImageNet written in each of its three layouts (real JPEGs, a real pickle)."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_CLASSES = {"train": 4, "val": 3, "test": 3}
IMAGES_PER_CLASS = 6
SOURCE_SIZE = 24


def fake_rows(split: str) -> list[tuple[str, str]]:
    """Split-CSV rows of the fake dataset: wnid-like labels, CSV-style filenames."""
    offset = {"train": 0, "val": 10, "test": 20}[split]
    rows = []
    for c in range(SPLIT_CLASSES[split]):
        label = f"n{offset + c + 1:08d}"
        rows += [(f"{label}{k + 1:08d}.jpg", label) for k in range(IMAGES_PER_CLASS)]
    return rows


def fake_image(split: str, index: int) -> Image.Image:
    """A deterministic small RGB image with some structure (JPEG-compressible)."""
    rng = np.random.default_rng(
        np.random.SeedSequence([{"train": 1, "val": 2, "test": 3}[split], index])
    )
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((SOURCE_SIZE, SOURCE_SIZE), Image.Resampling.NEAREST)


def write_fake_miniimagenet(root: Path, layout: str) -> Path:
    """A tiny miniImageNet in ``layout`` ("csv", "pickle", "folders"); same images for all.

    Images are JPEG files; the pickle holds the decoded JPEG pixels, as the real caches do.
    """
    root.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_CLASSES:
        rows = fake_rows(split)
        jpegs = root.parent / f"jpeg-{split}"
        jpegs.mkdir(exist_ok=True)
        for i, (filename, _) in enumerate(rows):
            if not (jpegs / filename).exists():
                fake_image(split, i).save(jpegs / filename, quality=90)
        if layout in ("csv", "pickle"):
            with open(root / f"{split}.csv", "w", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(["filename", "label"])
                writer.writerows(rows)
        if layout == "csv":
            (root / "images").mkdir(exist_ok=True)
            for filename, _ in rows:
                (root / "images" / filename).write_bytes((jpegs / filename).read_bytes())
        elif layout == "folders":
            for filename, label in rows:
                (root / split / label).mkdir(parents=True, exist_ok=True)
                (root / split / label / filename).write_bytes((jpegs / filename).read_bytes())
        else:
            decoded = [np.asarray(Image.open(jpegs / f).convert("RGB")) for f, _ in rows]
            class_dict: dict[str, list[int]] = {}
            for i, (_, label) in enumerate(rows):
                class_dict.setdefault(label, []).append(i)
            content = {"image_data": np.stack(decoded), "class_dict": class_dict}
            with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as handle:
                pickle.dump(content, handle)
    return root
