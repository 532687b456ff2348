"""Omniglot protocols (random, vinyals, background-evaluation) on a fake with real names,
and the shipped Vinyals split list."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pytest

from metaacdc.data import open_split, prepare
from metaacdc.data.sources.omniglot import plan_splits
from metaacdc.data.sources.omniglot_protocols import PROTOCOLS, assign, standard_characters
from metaacdc.errors import ConfigError
from tests.data.omniglot_fakes import BOTH, CHARACTERS, DRAWINGS, EXPECTED, write_folder, write_zip

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def full_fake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("omniglot")
    for name in BOTH:
        write_zip(root / f"{name}.zip", (name,))
    return root


def _characters(class_names: list[str]) -> set[str]:
    return {"/".join(name.split("/")[:2]) for name in class_names}


def _alphabets(class_names: list[str]) -> set[str]:
    return {name.split("/")[0] for name in class_names}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_class_counts_per_protocol(full_fake: Path, protocol: str) -> None:
    plans = {p.split: p for p in plan_splits(full_fake, SPLITS, image_size=8, protocol=protocol)}
    rotations = 4 if protocol == "vinyals" else 1  # on by default for vinyals only
    for split in SPLITS:
        plan = plans[split]
        assert len(_characters(plan.class_names)) == EXPECTED[protocol][split], split
        assert len(plan.class_names) == EXPECTED[protocol][split] * rotations
        assert set(Counter(plan.labels.tolist()).values()) == {DRAWINGS}
        assert plan.preprocessing["protocol"] == protocol
    names = [_characters(plans[s].class_names) for s in SPLITS]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_vinyals_follows_the_standard_lists(full_fake: Path) -> None:
    plans = {p.split: p for p in plan_splits(full_fake, SPLITS, image_size=8, protocol="vinyals")}
    assert _characters(plans["val"].class_names) == {"Armenian/character01", "Armenian/character02"}
    test = _characters(plans["test"].class_names)
    assert test == {
        "Gurmukhi/character42",
        "Gurmukhi/character43",
        "Kannada/character01",
        "Kannada/character02",
    }
    assert {"Gurmukhi/character40", "Gurmukhi/character41"} <= _characters(
        plans["train"].class_names
    )
    assert plans["train"].class_names[:4] == [
        f"Angelic/character01/rot{a:03d}" for a in (0, 90, 180, 270)
    ]
    meta = plans["test"].preprocessing
    assert meta["rotations"] == [0, 90, 180, 270]
    assert meta["split_list"] == "metaacdc/resources/omniglot/vinyals.csv"
    assert "split_seed" not in meta


def test_background_evaluation_is_alphabet_disjoint(full_fake: Path) -> None:
    plans = plan_splits(full_fake, SPLITS, image_size=8, protocol="background-evaluation")
    train, val, test = (_alphabets(p.class_names) for p in plans)
    assert train == {"Greek", "Latin"} and val == {"Armenian"}
    assert test == set(CHARACTERS["images_evaluation"])
    assert not (train & test or val & test or train & val)
    assert plans[0].preprocessing["rotations"] == [0]


def test_rotations_can_be_switched_either_way(full_fake: Path) -> None:
    plain = plan_splits(full_fake, ["val"], image_size=8, protocol="vinyals", rotations=False)
    assert len(plain[0].class_names) == 2
    rotated = plan_splits(full_fake, ["val"], image_size=8, rotations=True)
    assert len(rotated[0].class_names) == 4 * EXPECTED["random"]["val"]


def test_random_stays_the_default_and_is_recorded(full_fake: Path, tmp_path: Path) -> None:
    prepare("omniglot", tmp_path, root=full_fake, image_size=8, progress=False)
    meta = open_split(tmp_path / "train").meta
    assert meta.preprocessing["protocol"] == "random"
    assert meta.preprocessing["split_seed"] == 0
    assert meta.preprocessing["inputs"] == list(BOTH)
    assert len(_characters(meta.class_names)) == EXPECTED["random"]["train"]


def test_shipped_vinyals_list_has_the_standard_sizes() -> None:
    table = standard_characters()
    assert len(table) == 1623
    counts = Counter(standard.vinyals for standard in table.values())
    assert counts == {"train": 1028, "val": 172, "test": 423}
    sets = Counter(standard.set for standard in table.values())
    assert sets == {"background": 964, "evaluation": 659}
    # the rule the lists follow: background then evaluation, alphabet, number; 1200 | 423
    order = sorted(
        table, key=lambda c: (table[c].set != "background", c.split("/")[0], int(c[-2:]))
    )
    assert {table[c].vinyals for c in order[:1200]} == {"train", "val"}
    assert {table[c].vinyals for c in order[1200:]} == {"test"}
    assert order[1200] == "Gurmukhi/character42"
    val_alphabets = {c.split("/")[0] for c in table if table[c].vinyals == "val"}
    assert val_alphabets == {
        "Armenian",
        "Bengali",
        "Early_Aramaic",
        "Hebrew",
        "Mkhedruli_(Georgian)",
    }


def test_full_omniglot_sizes_per_protocol() -> None:
    everything = list(standard_characters())
    sizes = {
        protocol: {s: len(c) for s, c in assign(protocol, everything).items()}
        for protocol in PROTOCOLS
    }
    assert sizes["vinyals"] == {"train": 1028, "val": 172, "test": 423}
    assert sizes["background-evaluation"] == {"train": 792, "val": 172, "test": 659}
    assert sizes["random"] == {"train": 1100, "val": 100, "test": 423}


def test_vinyals_refuses_a_source_without_its_test_set(tmp_path: Path) -> None:
    write_folder(tmp_path, "images_background")
    with pytest.raises(ConfigError, match=r"vinyals finds no test characters.*images_evaluation"):
        plan_splits(tmp_path, protocol="vinyals")
    assert len(plan_splits(tmp_path, ["train"], protocol="vinyals")[0].class_names) == 5 * 4


def test_background_evaluation_names_missing_validation_alphabets(tmp_path: Path) -> None:
    write_folder(tmp_path, "images_evaluation")
    with pytest.raises(ConfigError, match=r"finds no train characters"):
        plan_splits(tmp_path, protocol="background-evaluation")
    with pytest.raises(ConfigError, match=r"no val characters.*Armenian, Bengali"):
        plan_splits(tmp_path, ["val"], protocol="background-evaluation")


def test_unknown_alphabet_is_refused_by_named_protocols_only(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        archive.writestr("images_background/Klingon/character01/0001_01.png", b"")
    for protocol in ("vinyals", "background-evaluation"):
        with pytest.raises(ConfigError, match=r"Klingon/character01: not one of the 1,623"):
            plan_splits(tmp_path, protocol=protocol)
    assert plan_splits(tmp_path, ["test"])[0].preprocessing["protocol"] == "random"


def test_bad_protocol_settings_are_one_line_errors(full_fake: Path) -> None:
    with pytest.raises(ConfigError, match=r"protocol='lake' is not valid; accepted values: random"):
        plan_splits(full_fake, protocol="lake")
    with pytest.raises(ConfigError, match="--split-seed applies to --protocol random only"):
        plan_splits(full_fake, protocol="vinyals", split_seed=1)
