"""A tiny fake Omniglot, built on the fly in each form it is downloaded in.

Real alphabet names, chosen so that every protocol has something to place in each split:
Greek and Latin (background, Vinyals train), Armenian (background, Vinyals val), Angelic
(evaluation, Vinyals train), Gurmukhi 40-43 (evaluation, straddling the Vinyals train/test
cut after character41) and Kannada (evaluation, Vinyals test). Two 12-px drawings per
character, saved as 1-bit PNGs like the real ones.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CHARACTERS = {
    "images_background": {"Greek": [1, 2, 3], "Latin": [1, 2], "Armenian": [1, 2]},
    "images_evaluation": {"Angelic": [1, 2], "Gurmukhi": [40, 41, 42, 43], "Kannada": [1, 2]},
}
DRAWINGS = 2
#: characters per split (before rotations) under each protocol, for the fake above
EXPECTED = {
    "vinyals": {"train": 9, "val": 2, "test": 4},
    "background-evaluation": {"train": 5, "val": 2, "test": 8},
    "random": {"train": 10, "val": 1, "test": 4},
}


def drawing(seed: int) -> bytes:
    """A deterministic 12 x 12 black-on-white 1-bit PNG."""
    page = np.full((12, 12), 255, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        x, y = rng.integers(0, 8, size=2)
        page[y : y + 4, x : x + 2] = 0
    buffer = io.BytesIO()
    Image.fromarray(page, "L").convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def members(name: str) -> dict[str, bytes]:
    """The files of input ``name`` (``images_background`` or ``images_evaluation``), keyed by
    their path inside it (``Alphabet/characterNN/NNNN_KK.png``)."""
    files = {}
    offset = 0 if name == "images_background" else 500
    for alphabet, numbers in CHARACTERS[name].items():
        for number in numbers:
            offset += 1
            for k in range(DRAWINGS):
                files[f"{alphabet}/character{number:02d}/{offset:04d}_{k + 1:02d}.png"] = drawing(
                    offset * 10 + k
                )
    return files


def write_folder(parent: Path, name: str) -> Path:
    """``parent/name/`` extracted."""
    for key, data in members(name).items():
        path = parent / name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return parent / name


def write_zip(path: Path, names: tuple[str, ...], prefixed: bool = True) -> Path:
    """A zip of the inputs ``names``, each under its own top folder (as the real zips),
    or with ``prefixed=False`` (one input only) the alphabets at the top."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            for key, data in members(name).items():
                archive.writestr(f"{name}/{key}" if prefixed else key, data)
    return path


def write_tar(path: Path, names: tuple[str, ...]) -> Path:
    """A gzipped tar of the inputs ``names``, each under its own top folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name in names:
            for key, data in members(name).items():
                info = tarfile.TarInfo(f"{name}/{key}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


BOTH = ("images_background", "images_evaluation")


def write_forms(base: Path) -> dict[str, Path]:
    """The full fake in each accepted form, by name of the form."""
    forms = {}
    holding_zips = base / "holding-zips"
    for name in BOTH:
        write_zip(holding_zips / f"{name}.zip", (name,))
    forms["folder holding zips"] = holding_zips
    holding_folders = base / "holding-folders"
    for name in BOTH:
        write_folder(holding_folders, name)
    forms["folder holding folders"] = holding_folders
    mixed = base / "mixed"
    write_zip(mixed / "images_background.zip", ("images_background",))
    write_folder(mixed, "images_evaluation")
    forms["folder holding a zip and a folder"] = mixed
    forms["one zip of both"] = write_zip(base / "omniglot.zip", BOTH)
    forms["one tar.gz of both"] = write_tar(base / "omniglot.tar.gz", BOTH)
    return forms
