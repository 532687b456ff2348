"""Omniglot (Lake et al.) from any form it is downloaded in, split by a named protocol.

The source ``root`` is a folder, a zip or tar archive, or a folder holding them (read in
place by :func:`metaacdc.data.archives.source_files`, nothing extracted). Every
``<input>/<Alphabet>/characterNN/<drawing>.png`` in it is a drawing, whatever the input is
called: ``images_background``, ``images_evaluation``, the 5-alphabet
``images_background_small1``/``small2``, torchvision's ``omniglot-py/images_background``.
A drawing found in several inputs (the small sets repeat the background set) is read once.

Characters, not drawings, are split into train/val/test by the ``protocol``
(:mod:`metaacdc.data.sources.omniglot_protocols`: ``random``, the default; ``vinyals``;
``background-evaluation``). With ``rotations`` (on by default for ``vinyals`` only) each
character also gives three rotated classes (90, 180, 270 degrees) in the same split.
Images are grayscale, inverted so strokes are bright on a dark background, resized
bilinearly (28 px by default). The protocol and every other choice are recorded in
``meta.json``; nothing recorded depends on where the source lies or on its form, so the same
drawings give byte-identical caches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaacdc.data.archives import SourceFile, source_files
from metaacdc.data.sources.base import (
    RESAMPLE,
    SplitPlan,
    check_image_size,
    decode_image,
    digest_of,
)
from metaacdc.data.sources.omniglot_protocols import (
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    ROTATIONS_BY_DEFAULT,
    STANDARD_SPLIT,
    assign,
    describe,
    missing_hint,
    split_characters,
)
from metaacdc.errors import ConfigError, check_choice, check_positive_int

__all__ = ["PROTOCOLS", "ROTATIONS", "STANDARD_SPLIT", "plan_splits", "split_characters"]

ROTATIONS = (0, 90, 180, 270)
#: ``.../<input>/<Alphabet>/characterNN/<drawing>.png`` (the input is the folder of alphabets)
DRAWING = re.compile(
    r"(?:.*/)?(?P<input>[^/]+)/(?P<alphabet>[^/]+)/(?P<character>character\d+)/"
    r"(?P<name>[^/]+\.png)",
    re.IGNORECASE,
)


def find_drawings(root: Path) -> tuple[dict[str, list[tuple[str, SourceFile]]], list[str]]:
    """The drawings under ``root`` by character (``Alphabet/characterNN``), each as
    ``(filename, file)`` sorted by filename, and the names of the inputs they came from.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ConfigError: no drawing found, or an unreadable archive.
    """
    if not Path(root).exists():
        raise FileNotFoundError(f"{root}: Omniglot source not found (a folder or a .zip/.tar)")
    by_character: dict[str, dict[str, SourceFile]] = {}
    inputs: set[str] = set()
    for path, file in source_files(root).items():
        match = DRAWING.fullmatch(path)
        if match is None:
            continue
        character = f"{match['alphabet']}/{match['character']}"
        drawings = by_character.setdefault(character, {})
        if match["name"] not in drawings:  # the first input in path order wins
            drawings[match["name"]] = file
            inputs.add(match["input"])
    if not by_character:
        raise ConfigError(
            f"{root}: no Omniglot drawings (<Alphabet>/characterNN/*.png inside a folder such "
            "as images_background) in it or in the .zip/.tar archives it holds; see "
            "data/README.md"
        )
    return {c: sorted(d.items()) for c, d in sorted(by_character.items())}, sorted(inputs)


def plan_splits(
    root: Path | str,
    splits: Sequence[str] = ("train", "val", "test"),
    image_size: int = 28,
    rotations: bool | None = None,
    split_seed: int | None = None,
    protocol: str = DEFAULT_PROTOCOL,
) -> list[SplitPlan]:
    """Plans for the Omniglot ``splits`` found under ``root``.

    Args:
        root: a folder, a zip/tar archive, or a folder holding them.
        splits: which of ``train``, ``val``, ``test`` to plan.
        image_size: target side in pixels.
        rotations: add the 90/180/270-degree rotations as classes; ``None``: the
            protocol's default (on for ``vinyals`` only).
        split_seed: the ``random`` protocol's permutation seed (default 0); refused with
            another protocol, whose split is fixed.
        protocol: ``random``, ``vinyals`` or ``background-evaluation``.

    Raises:
        ConfigError: a bad setting, no drawings, a character the protocol cannot place, or
            a requested split the protocol leaves empty (naming what the source lacks).
    """
    check_image_size(image_size)
    check_choice("protocol", protocol, PROTOCOLS)
    if split_seed is not None and protocol != "random":
        raise ConfigError(f"--split-seed applies to --protocol random only, not {protocol}")
    seed = 0 if split_seed is None else split_seed
    check_positive_int("split_seed", seed, minimum=0)
    for split in splits:
        check_choice("split", split, ("train", "val", "test"))
    rotate = ROTATIONS_BY_DEFAULT[protocol] if rotations is None else bool(rotations)
    by_character, inputs = find_drawings(Path(root))
    assignment = assign(protocol, list(by_character), seed)
    for split in splits:
        if not assignment[split] and protocol != "random":
            raise ConfigError(
                f"{root}: protocol {protocol} finds no {split} characters in this source; "
                + missing_hint(protocol, split)
            )
    angles = ROTATIONS if rotate else (0,)
    preprocessing = {
        "mode": "L",
        "inverted": True,
        "resample": RESAMPLE,
        "rotations": list(angles),
        "rotation_direction": "counter-clockwise, applied after resizing",
        **describe(protocol, seed),
        "inputs": inputs,
    }
    plans = []
    for split in splits:
        entries = []
        for character in assignment[split]:
            for angle in angles:
                suffix = f"/rot{angle:03d}" if rotate else ""
                tag = f"@rot{angle:03d}" if rotate else ""
                for filename, file in by_character[character]:
                    entries.append(
                        (character + suffix, f"{character}/{filename}{tag}", angle, file)
                    )
        plans.append(_plan(split, entries, image_size, preprocessing))
    return plans


def _plan(
    split: str,
    entries: list[tuple[str, str, int, SourceFile]],
    image_size: int,
    preprocessing: dict[str, Any],
) -> SplitPlan:
    entries.sort(key=lambda e: (e[0], e[1]))
    class_names = sorted({e[0] for e in entries})
    index = {name: i for i, name in enumerate(class_names)}
    # names and sizes of the drawings read: the same whatever form the source came in
    listing = sorted({(e[1].split("@")[0], e[3].size) for e in entries})

    def read(i: int) -> tuple[np.ndarray, bytes]:
        _, _, angle, file = entries[i]
        data = file.read()
        image = 255 - decode_image(data, file.origin, image_size, "L")  # strokes bright
        return np.ascontiguousarray(np.rot90(image, k=angle // 90, axes=(0, 1))), data

    return SplitPlan(
        source="omniglot",
        split=split,
        image_size=image_size,
        channels=1,
        class_names=class_names,
        labels=np.array([index[e[0]] for e in entries], dtype=np.int64),
        filenames=[e[1] for e in entries],
        fingerprint=digest_of(["omniglot", split, image_size, preprocessing, listing]),
        preprocessing=preprocessing,
        read=read,
    )
