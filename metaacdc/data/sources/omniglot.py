"""Omniglot (Lake et al.) from its zips or extracted folders, with a seeded character split.

Under ``root`` any of ``images_background``, ``images_evaluation``,
``images_background_small1`` and ``images_background_small2`` is read, each as ``NAME.zip``
or as the folder ``NAME/`` (``Alphabet/characterNN/*.png``). A character present in several
inputs (the small subsets repeat the background set) is taken once. Characters, not images,
are split into train/val/test by a seeded permutation in the proportions 1100/100/423 of the
standard 1623 characters; with ``rotations`` each character also gives three rotated classes
(90, 180, 270 degrees) in the same split. Images are grayscale, inverted so strokes are bright
on a dark background, resized bilinearly (28 px by default): all recorded in ``meta.json``.
"""

from __future__ import annotations

import functools
import hashlib
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from metaacdc.data.sources.base import (
    RESAMPLE,
    SplitPlan,
    check_image_size,
    decode_image,
    digest_of,
    read_bytes,
)
from metaacdc.errors import ConfigError, check_choice, check_positive_int

INPUTS = (
    "images_background",
    "images_evaluation",
    "images_background_small1",
    "images_background_small2",
)
STANDARD_SPLIT = (1100, 100, 423)  # characters of train/val/test in the full 1623
ROTATIONS = (0, 90, 180, 270)

Reader = Callable[[], bytes]


def _zip_members(path: Path) -> tuple[dict[str, Reader], str]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"{path}: not a readable zip archive ({error})") from error
    members: dict[str, Reader] = {}
    for info in archive.infolist():
        parts = info.filename.split("/")
        if info.is_dir() or not parts[-1].lower().endswith(".png"):
            continue
        if parts[0] == path.stem:
            parts = parts[1:]
        if len(parts) != 3:
            continue

        def read(info: zipfile.ZipInfo = info) -> bytes:
            try:
                return archive.read(info)
            except (zipfile.BadZipFile, OSError) as error:
                raise ConfigError(f"{path}:{info.filename}: unreadable ({error})") from error

        members["/".join(parts)] = read
    return members, hashlib.sha256(path.read_bytes()).hexdigest()


def _folder_members(path: Path) -> tuple[dict[str, Reader], str]:
    members: dict[str, Reader] = {}
    listing = []
    for file in sorted(path.glob("*/*/*.png")):
        key = file.relative_to(path).as_posix()
        members[key] = functools.partial(read_bytes, file)
        listing.append((key, file.stat().st_size))
    return members, digest_of(listing)


def find_inputs(root: Path) -> list[tuple[str, Path]]:
    """The Omniglot inputs present under ``root``, as ``(name, path)``."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Omniglot folder not found")
    found = []
    for name in INPUTS:
        if (root / name).is_dir():
            found.append((name, root / name))
        elif (root / f"{name}.zip").is_file():
            found.append((name, root / f"{name}.zip"))
    if not found:
        raise ConfigError(
            f"{root}: none of {', '.join(INPUTS)} found (as NAME.zip or NAME/); see data/README.md"
        )
    return found


def split_characters(characters: Sequence[str], seed: int) -> dict[str, list[str]]:
    """Seeded split of character keys into train/val/test in the standard proportions."""
    ordered = sorted(characters)
    total = sum(STANDARD_SPLIT)
    n_train = round(len(ordered) * STANDARD_SPLIT[0] / total)
    n_val = round(len(ordered) * STANDARD_SPLIT[1] / total)
    rng = np.random.default_rng(np.random.SeedSequence([seed]))
    permuted = [ordered[i] for i in rng.permutation(len(ordered))]
    return {
        "train": sorted(permuted[:n_train]),
        "val": sorted(permuted[n_train : n_train + n_val]),
        "test": sorted(permuted[n_train + n_val :]),
    }


def plan_splits(
    root: Path | str,
    splits: Sequence[str] = ("train", "val", "test"),
    image_size: int = 28,
    rotations: bool = False,
    split_seed: int = 0,
) -> list[SplitPlan]:
    """Plans for the Omniglot ``splits`` found under ``root``."""
    root = Path(root)
    check_image_size(image_size)
    check_positive_int("split_seed", split_seed, minimum=0)
    for split in splits:
        check_choice("split", split, ("train", "val", "test"))
    members: dict[str, tuple[Reader, str]] = {}
    sources = []
    for name, path in find_inputs(root):
        found, digest = _zip_members(path) if path.suffix == ".zip" else _folder_members(path)
        sources.append((name, digest))
        for key, reader in found.items():
            members.setdefault(key, (reader, f"{path}/{key}"))
    by_character: dict[str, list[str]] = {}
    for key in members:
        alphabet, character, filename = key.split("/")
        by_character.setdefault(f"{alphabet}/{character}", []).append(filename)
    if not by_character:
        raise ConfigError(f"{root}: no Alphabet/characterNN/*.png images in the Omniglot inputs")
    assignment = split_characters(list(by_character), split_seed)
    angles = ROTATIONS if rotations else (0,)
    preprocessing = {
        "mode": "L",
        "inverted": True,
        "resample": RESAMPLE,
        "rotations": list(angles),
        "rotation_direction": "counter-clockwise, applied after resizing",
        "split_seed": split_seed,
        "split_proportions": list(STANDARD_SPLIT),
        "inputs": [name for name, _ in sources],
    }
    plans = []
    for split in splits:
        entries = []
        for character in assignment[split]:
            for angle in angles:
                suffix = f"/rot{angle:03d}" if rotations else ""
                for filename in sorted(by_character[character]):
                    tag = f"@rot{angle:03d}" if rotations else ""
                    entries.append((character + suffix, f"{character}/{filename}{tag}", angle))
        plans.append(_plan(split, entries, members, image_size, preprocessing, sources))
    return plans


def _plan(
    split: str,
    entries: list[tuple[str, str, int]],
    members: dict[str, tuple[Reader, str]],
    image_size: int,
    preprocessing: dict,
    sources: list[tuple[str, str]],
) -> SplitPlan:
    entries.sort(key=lambda e: (e[0], e[1]))
    class_names = sorted({e[0] for e in entries})
    index = {name: i for i, name in enumerate(class_names)}

    def read(i: int) -> tuple[np.ndarray, bytes]:
        _, filename, angle = entries[i]
        reader, where = members[filename.split("@")[0]]
        data = reader()
        image = decode_image(data, where, image_size, "L")
        image = 255 - image  # strokes bright, background dark
        return np.ascontiguousarray(np.rot90(image, k=angle // 90, axes=(0, 1))), data

    return SplitPlan(
        source="omniglot",
        split=split,
        image_size=image_size,
        channels=1,
        class_names=class_names,
        labels=np.array([index[e[0]] for e in entries], dtype=np.int64),
        filenames=[e[1] for e in entries],
        fingerprint=digest_of(["omniglot", split, image_size, preprocessing, sources]),
        preprocessing=preprocessing,
        read=read,
    )
