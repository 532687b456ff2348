"""How Omniglot characters become train/val/test classes: the three published protocols.

- ``random`` (default, as before): one seeded permutation of the characters found, cut in
  the proportions 1100/100/423 of the full 1,623, regardless of alphabet (``split_seed``).
  Works on any subset of Omniglot, and on Omniglot-like data with other alphabets.
- ``vinyals``: the split of Vinyals et al. (2016), used by the MAML paper's Omniglot
  results and by most few-shot work since: 1,200 characters for training (1,028 train +
  172 validation), the other 423 for test, each character also rotated by 90/180/270
  degrees as three more classes (rotations on by default).
- ``background-evaluation``: Lake et al.'s alphabet-disjoint protocol: every
  ``images_background`` alphabet for training and validation, every ``images_evaluation``
  alphabet for test (964 / 659 characters), no rotations by default.

Which characters are which comes from ``metaacdc/resources/omniglot/vinyals.csv`` (its
``SOURCE.md`` gives the provenance): Snell et al.'s distribution of the Vinyals split
(``prototypical-networks/data/omniglot/splits/vinyals/*.txt``), the split torchmeta also
ships. Why those lists and not an order of our own: MAML's code (cbfinn/maml,
``data_generator.py``) takes the first 1,200 characters after ``random.seed(1);
random.shuffle`` of an ``os.listdir`` order, which depends on the filesystem, and
learn2learn's ``omniglot_tasksets`` shuffles class ids with the unseeded global
``random``: neither can be reproduced. The Vinyals lists can, and follow a rule anyone can
check: order the characters by set (``images_background`` first), then alphabet name, then
character number; the first 1,200 are for training, the last 423 (``Gurmukhi``
``character42`` onwards) for test. Their validation set is five whole background alphabets
(Armenian, Bengali, Early_Aramaic, Hebrew, Mkhedruli_(Georgian)); ``background-evaluation``
carves the same five out of ``images_background`` as its validation set, so its validation
alphabets are disjoint from its training ones too.

Characters are named ``Alphabet/characterNN`` as in the Omniglot zips. ``vinyals`` and
``background-evaluation`` place characters by these names, so they accept any subset of
the 50 alphabets (a split left empty is refused when it is asked for) but no other names.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from metaacdc.errors import ConfigError, check_choice

PROTOCOLS = ("random", "vinyals", "background-evaluation")
DEFAULT_PROTOCOL = "random"
#: whether each protocol adds the 90/180/270-degree rotations unless told otherwise
ROTATIONS_BY_DEFAULT = {"random": False, "vinyals": True, "background-evaluation": False}
STANDARD_SPLIT = (1100, 100, 423)  # characters of train/val/test in the full 1623 (random)
SPLIT_FILE = "vinyals.csv"
CHARACTER = re.compile(r"character(\d+)")


@dataclass(frozen=True)
class Standard:
    """Where the standard lists put one character: its set and its Vinyals split."""

    set: str  # "background" or "evaluation"
    vinyals: str  # "train", "val" or "test"


@functools.lru_cache(maxsize=1)
def _split_text() -> str:
    return (resources.files("metaacdc") / "resources" / "omniglot" / SPLIT_FILE).read_text()


@functools.lru_cache(maxsize=1)
def standard_characters() -> dict[str, Standard]:
    """Every one of the 1,623 characters (``Alphabet/characterNN``) with its set and split."""
    table: dict[str, Standard] = {}
    for row in csv.DictReader(_split_text().splitlines()):
        for number in range(int(row["first"]), int(row["last"]) + 1):
            table[f"{row['alphabet']}/character{number:02d}"] = Standard(row["set"], row["split"])
    return table


def split_file_sha256() -> str:
    """sha256 of the shipped split list, recorded in ``meta.json``."""
    return hashlib.sha256(_split_text().encode()).hexdigest()


def split_characters(characters: Sequence[str], seed: int) -> dict[str, list[str]]:
    """``random``: seeded split of character keys into train/val/test in the standard
    proportions."""
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


def _standard(character: str, protocol: str) -> Standard:
    known = standard_characters().get(_canonical(character))
    if known is None:
        raise ConfigError(
            f"{character}: not one of the 1,623 Omniglot characters of the standard lists "
            f"(metaacdc/resources/omniglot/{SPLIT_FILE}); --protocol {protocol} places "
            "characters by their standard names, --protocol random splits any characters"
        )
    return known


def _canonical(character: str) -> str:
    """``Alphabet/characterNN`` with a two-digit number, as the lists name characters."""
    alphabet, _, name = character.partition("/")
    match = CHARACTER.fullmatch(name)
    return f"{alphabet}/character{int(match.group(1)):02d}" if match else character


def assign(protocol: str, characters: Sequence[str], split_seed: int = 0) -> dict[str, list[str]]:
    """The characters of each split (``train``, ``val``, ``test``) under ``protocol``.

    Args:
        protocol: one of :data:`PROTOCOLS`.
        characters: the characters found, as ``Alphabet/characterNN``.
        split_seed: the permutation's seed (``random`` only).

    Raises:
        ConfigError: an unknown protocol, or (``vinyals``, ``background-evaluation``) a
            character the standard lists do not name.
    """
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "random":
        return split_characters(characters, split_seed)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for character in sorted(characters):
        standard = _standard(character, protocol)
        if protocol == "vinyals":
            splits[standard.vinyals].append(character)
        elif standard.set == "evaluation":
            splits["test"].append(character)
        else:  # background: the Vinyals validation alphabets validate, the rest train
            splits["val" if standard.vinyals == "val" else "train"].append(character)
    return splits


def missing_hint(protocol: str, split: str) -> str:
    """What a source lacks when ``protocol`` finds no characters for ``split``."""
    if protocol == "random":
        return "too few characters to split; give more of Omniglot"
    if split == "test" and protocol == "vinyals":
        return (
            "its test characters are in images_evaluation (Gurmukhi character42-45 and 12 "
            "more alphabets, Kannada to ULOG); give images_evaluation too"
        )
    if split == "test":
        return "its test characters are all of images_evaluation; give images_evaluation too"
    if split == "val":
        return (
            "its validation characters are the images_background alphabets Armenian, "
            "Bengali, Early_Aramaic, Hebrew and Mkhedruli_(Georgian); give images_background"
        )
    return "give images_background (and, for vinyals, images_evaluation)"


def describe(protocol: str, split_seed: int) -> dict[str, object]:
    """What ``meta.json`` records of the protocol (its name and what fixes its split)."""
    if protocol == "random":
        return {
            "protocol": protocol,
            "split_seed": split_seed,
            "split_proportions": list(STANDARD_SPLIT),
        }
    return {
        "protocol": protocol,
        "split_list": f"metaacdc/resources/omniglot/{SPLIT_FILE}",
        "split_list_sha256": split_file_sha256(),
    }
