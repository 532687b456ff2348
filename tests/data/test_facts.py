"""Data facts: built from a split, validated, and stored in a checkpoint's plain format."""

from __future__ import annotations

import dataclasses

import pytest

from metaacdc.data import DataFacts, synthetic_split
from metaacdc.errors import ConfigError

#: the facts of a 16 px synthetic split as checkpoints have always stored them
PLAIN = {
    "source": "synthetic",
    "image_size": 16,
    "channels": 3,
    "mean": [0.5, 0.25, 0.125],
    "std": [0.2, 0.3, 0.4],
    "inverted": False,
}


def test_from_split_records_the_split_preprocessing() -> None:
    split = synthetic_split("train", image_size=16, images_per_class=2)
    facts = DataFacts.from_split(split)
    assert (facts.source, facts.image_size, facts.channels) == ("synthetic", 16, 3)
    assert facts.mean == tuple(split.meta.mean) and facts.std == tuple(split.meta.std)
    assert facts.inverted is False


def test_round_trip_through_plain_types() -> None:
    facts = DataFacts.from_dict(PLAIN)
    assert facts.mean == (0.5, 0.25, 0.125) and isinstance(facts.mean, tuple)
    assert facts.to_dict() == PLAIN
    assert all(type(v) is float for v in facts.to_dict()["std"])  # weights_only-safe
    assert DataFacts.from_dict(facts.to_dict()) == facts
    assert hash(facts) == hash(DataFacts.from_dict(PLAIN))  # frozen: a dict key, a set item
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.channels = 1  # type: ignore[misc]


def test_grayscale_and_integer_statistics() -> None:
    facts = DataFacts("omniglot", 28, 1, [0], [1], inverted=True)
    assert facts.mean == (0.0,) and facts.std == (1.0,) and facts.inverted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"channels": 2}, "channels=2; expected 1 or 3"),
        ({"channels": True}, "channels=True"),
        ({"image_size": 0}, r"image_size=0; expected an integer >= 1"),
        ({"image_size": "84"}, "image_size='84'"),
        ({"mean": [0.5, 0.5]}, r"mean=\[0.5, 0.5\]; expected 3 numbers"),
        ({"std": "abc"}, "std='abc'; expected 3 numbers"),
        ({"mean": [0.5, None, 0.5]}, "mean=.*expected 3 numbers"),
        ({"std": [0.2, 0.0, 0.4]}, r"std=\[0.2, 0.0, 0.4\]; expected positive numbers"),
        ({"std": [0.2, -1, 0.4]}, "std=.*; expected positive numbers"),
        ({"inverted": "no"}, "inverted='no'; expected true or false"),
        ({"source": ""}, "source=''"),
    ],
)
def test_invalid_values_are_refused_naming_them(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^data facts: {message}"):
        DataFacts.from_dict({**PLAIN, **change})


def test_malformed_mappings_are_refused() -> None:
    with pytest.raises(ConfigError, match="data facts lack mean, inverted"):
        DataFacts.from_dict({k: v for k, v in PLAIN.items() if k not in ("mean", "inverted")})
    with pytest.raises(ConfigError, match=r"data facts have unknown key\(s\) colour"):
        DataFacts.from_dict({**PLAIN, "colour": "blue"})
    with pytest.raises(ConfigError, match=r"data facts are not a mapping \(got list\)"):
        DataFacts.from_dict([1, 2, 3])
