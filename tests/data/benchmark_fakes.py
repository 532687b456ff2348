"""Tiny fakes of CIFAR-100 (python archive), CUB-200-2011 and tieredImageNet, built on the fly.

Each fake has the real structure and the real class names (from the shipped split tables),
so class counts per split come out as in the real datasets, with a handful of tiny images
per class instead of hundreds. Nothing is downloaded and nothing large is written.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metaacdc.data.sources.split_tables import read_split_table

CIFAR_TRAIN_PER_CLASS = 2  # the real archive: 500
CIFAR_TEST_PER_CLASS = 1  # the real archive: 100
CUB_PER_CLASS = 2  # the real dataset: about 60
TIERED_PER_CLASS = 1  # the real dataset: about 1,300
SIDE = 12


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def tiny_image(*key: int, mode: str = "RGB") -> Image.Image:
    """A deterministic ``SIDE`` x ``SIDE`` image with blocky structure."""
    base = _rng(*key).integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((SIDE, SIDE), Image.Resampling.NEAREST)
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str) -> bytes:
    """``image`` encoded as ``fmt`` ("PNG" or "JPEG")."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def tar_folder(folder: Path, archive: Path) -> Path:
    """``folder`` packed as a gzip tar (its own name as the top folder), like the downloads."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


# --- CIFAR-100 -------------------------------------------------------------------------


def cifar_names() -> tuple[list[str], list[str], dict[str, str]]:
    """CIFAR-100's fine and coarse label names (alphabetical, as in its ``meta``) and the
    superclass of each class, from the shipped CIFAR-FS table."""
    superclass = {row["class"]: row["superclass"] for row in read_split_table("cifar_fs")}
    return sorted(superclass), sorted(set(superclass.values())), superclass


def cifar_content(part: str) -> dict[str, Any]:
    """The ``train`` or ``test`` file of the fake archive (keys as in the real one)."""
    fine_names, coarse_names, superclass = cifar_names()
    per_class = CIFAR_TRAIN_PER_CLASS if part == "train" else CIFAR_TEST_PER_CLASS
    fine = [c for c in range(100) for _ in range(per_class)]
    order = _rng(7, len(part)).permutation(len(fine))  # classes interleaved, as in the real file
    fine = [fine[i] for i in order]
    coarse = [coarse_names.index(superclass[fine_names[f]]) for f in fine]
    data = _rng(11, len(part)).integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
    return {
        "batch_label": f"{part}ing batch 1 of 1",
        "filenames": [f"{fine_names[f]}_s_{i:06d}.png" for i, f in enumerate(fine)],
        "fine_labels": fine,
        "coarse_labels": coarse,
        "data": data,
    }


def write_cifar100_folder(root: Path, content: dict[str, Any] | None = None) -> Path:
    """``root/cifar-100-python/{meta,train,test}``; ``content`` replaces files (raw bytes
    or objects to pickle) by name."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_names, coarse_names, _ = cifar_names()
    files: dict[str, Any] = {
        "meta": {"fine_label_names": fine_names, "coarse_label_names": coarse_names},
        "train": cifar_content("train"),
        "test": cifar_content("test"),
    }
    files.update(content or {})
    for name, value in files.items():
        # protocol 2 and str keys: what the Python 2 originals read as with latin-1 give
        data = value if isinstance(value, bytes) else pickle.dumps(value, protocol=2)
        (folder / name).write_bytes(data)
    (folder / "file.txt~").write_text("")
    return folder


def write_cifar100_archive(root: Path, content: dict[str, Any] | None = None) -> Path:
    """``root/cifar-100-python.tar.gz`` holding the fake folder."""
    folder = write_cifar100_folder(root / "unpacked", content)
    root.mkdir(parents=True, exist_ok=True)
    return tar_folder(folder, root / "cifar-100-python.tar.gz")


# --- CUB-200-2011 ----------------------------------------------------------------------


def write_cub_folder(root: Path, classes: list[str] | None = None) -> Path:
    """``root/CUB_200_2011/images/<class>/*.jpg`` (plus the text files beside ``images``)."""
    top = root / "CUB_200_2011"
    names = classes if classes is not None else [r["class"] for r in read_split_table("cub")]
    for c, name in enumerate(names):
        folder = top / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        bird = name.split(".", 1)[-1]
        for k in range(CUB_PER_CLASS):
            mode = "L" if (c, k) == (0, 1) else "RGB"  # a few real CUB images are grayscale
            image = tiny_image(3, c, k, mode=mode)
            (folder / f"{bird}_{k + 1:04d}_{c}{k}.jpg").write_bytes(encoded(image, "JPEG"))
        (folder / "._macos_metadata.jpg").write_bytes(b"not an image")
    (top / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (top / "README").write_text("fake CUB-200-2011\n")
    return top


def write_cub_archive(root: Path) -> Path:
    """``root/CUB_200_2011.tgz`` holding the fake folder."""
    top = write_cub_folder(root / "unpacked")
    root.mkdir(parents=True, exist_ok=True)
    return tar_folder(top, root / "CUB_200_2011.tgz")


# --- tieredImageNet --------------------------------------------------------------------


def tiered_wnids(split: str) -> list[str]:
    """The shipped tieredImageNet classes of ``split``, in table order."""
    return [r["wnid"] for r in read_split_table("tieredimagenet") if r["split"] == split]


def _tiered_png(split: str, c: int, k: int) -> bytes:
    return encoded(tiny_image(5, len(split), c, k), "PNG")


def write_tiered_folders(root: Path, layout: str = "folders") -> Path:
    """``root/{split}/<wnid>/*.png`` ("folders") or ``root/<wnid>/*.png`` ("imagenet", with
    two extra ImageNet classes that are not in tieredImageNet)."""
    for split in ("train", "val", "test"):
        base = root / split if layout == "folders" else root
        for c, wnid in enumerate(tiered_wnids(split)):
            (base / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(TIERED_PER_CLASS):
                (base / wnid / f"{wnid}_{k:05d}.png").write_bytes(_tiered_png(split, c, k))
    if layout == "imagenet":
        for wnid in ("n04592741", "n15075141"):  # wing, toilet tissue: ImageNet, not tiered
            (root / wnid).mkdir()
            (root / wnid / f"{wnid}_00000.png").write_bytes(_tiered_png("x", 0, 0))
    return root


def tiered_pickles(split: str, names: str = "wnid") -> tuple[list[np.ndarray], dict[str, Any]]:
    """Images and labels of a pickle-layout split, as Ren et al.'s files hold them: a list of
    PNG bytes as ``(n, 1)`` uint8 arrays (``cv2.imencode``'s output), and a labels dict.
    Classes are in a shuffled order (theirs follow ``os.listdir``); ``names`` is "wnid",
    "text" (human-readable names) or "none" (no ``label_specific_str``)."""
    wnids = tiered_wnids(split)
    order = [wnids[i] for i in _rng(9, len(split)).permutation(len(wnids))]
    images, labels = [], []
    for c, wnid in enumerate(order):
        for k in range(TIERED_PER_CLASS):
            data = _tiered_png(split, wnids.index(wnid), k)
            images.append(np.frombuffer(data, dtype=np.uint8).reshape(-1, 1).copy())
            labels.append(c)
    content: dict[str, Any] = {
        "label_specific": np.array(labels, dtype=np.int32),
        "label_general": np.zeros(len(labels), dtype=np.int32),
        "label_general_str": ["a category"],
    }
    if names == "wnid":
        content["label_specific_str"] = order
    elif names == "text":
        content["label_specific_str"] = [f"bird {w}" for w in order]
    return images, content


def write_tiered_pickles(
    root: Path, names: str = "wnid", prefix: str = "", replace: dict[str, bytes] | None = None
) -> Path:
    """``root/{prefix}{split}_images_png.pkl`` and ``..._labels.pkl`` for every split;
    ``replace`` swaps a file's bytes by its name."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        images, labels = tiered_pickles(split, names)
        files = {
            f"{prefix}{split}_images_png.pkl": pickle.dumps(images, protocol=2),
            f"{prefix}{split}_labels.pkl": pickle.dumps(labels, protocol=2),
        }
        for name, data in files.items():
            (root / name).write_bytes((replace or {}).get(name, data))
    if names == "text":  # the class-name files distributed beside the pickles
        wnids = [r["wnid"] for r in read_split_table("tieredimagenet")]
        (root / f"{prefix}synsets.txt").write_text("".join(f"{w}\n" for w in wnids))
        (root / f"{prefix}class_names.txt").write_text("".join(f"bird {w}\n" for w in wnids))
    return root
