"""The committed model table (docs/model_table.csv) against counts worked out by hand from
the Conv4 architecture, not by the counting code that wrote the table.

tests/cli/test_info.py checks that the file equals a fresh run of its command (a golden
comparison with the code's own output); this is its independent neighbour."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import REPO

WAYS = 5
WIDTH = 64
KERNEL = 3 * 3
GROUP = 32  # group_size of the acdc-g-net rows
# Conv4 (CloserLook): four blocks conv3x3(64, bias) -> BN -> max-pool 2 -> ReLU, 84 px input
# (padding 1 keeps each conv's size): 84 -> 42 -> 21 -> 10 -> 5, so 64 x 5 x 5 features.
SIZES = [84, 42, 21, 10]
FEATURES = WIDTH * 5 * 5
IN_CHANNELS = [3, WIDTH, WIDTH, WIDTH]

BIASES_AND_NORMS = 4 * WIDTH + 4 * 2 * WIDTH  # conv biases, batch-norm weight and bias
HEAD = FEATURES * WAYS + WAYS


def by_hand(conv: str, atoms: int) -> dict[str, int]:
    """Coefficients, atoms and backbone parameters of Conv4 with ``conv``: every conv is
    3x3, so each ACDC layer has ``atoms`` atoms of 3x3 (per unit when grouped); the
    coefficients are one ``out x in x m`` tensor per layer (``acdc-layer``; ``acdc-block``
    too, as every Conv4 block pools and so is a block of its own), one ``64 x 64 x m``
    tensor for all (``acdc-net``), or, grouped, the RGB stem's own ``64 x 3 x m`` and one
    shared ``32 x 32 x m`` for the other layers, each of which has 64/32 = 2 units."""
    if conv == "plain":
        coefficients, atom_count = 0, 0
        weights = sum(c * WIDTH * KERNEL for c in IN_CHANNELS)
    elif conv in ("acdc-layer", "acdc-block"):
        coefficients = sum(WIDTH * c * atoms for c in IN_CHANNELS)
        atom_count, weights = 4 * atoms * KERNEL, 0
    elif conv == "acdc-net":
        coefficients = WIDTH * WIDTH * atoms
        atom_count, weights = 4 * atoms * KERNEL, 0
    else:
        assert conv == "acdc-g-net"
        coefficients = WIDTH * 3 * atoms + GROUP * GROUP * atoms
        atom_count, weights = atoms * KERNEL + 3 * (WIDTH // GROUP) * atoms * KERNEL, 0
    backbone = weights + coefficients + atom_count + BIASES_AND_NORMS
    return {
        "coefficients": coefficients,
        "atom_parameters": atom_count,
        "backbone_parameters": backbone,
        "parameters": backbone + HEAD,
    }


@pytest.fixture(scope="module")
def conv4_rows() -> pd.DataFrame:
    table = pd.read_csv(REPO / "docs" / "model_table.csv", dtype={"atoms": str})
    return table[table["backbone"] == "conv4"]


def test_committed_conv4_parameter_counts_equal_the_hand_count(conv4_rows: pd.DataFrame) -> None:
    assert len(conv4_rows) == 9  # plain, and four ACDC kinds at 8 and 16 atoms
    for row in conv4_rows.to_dict("records"):
        atoms = 0 if row["atoms"] == "-" else int(row["atoms"])
        expected = by_hand(str(row["conv"]), atoms)
        assert {name: row[name] for name in expected} == expected, (row["conv"], atoms)
        assert row["image_size"] == 84


def test_committed_plain_conv4_flops_equal_the_hand_count(conv4_rows: pd.DataFrame) -> None:
    """2 x multiply-adds of the convolutions and the head (batch norm, pooling and ReLU are
    not counted, as the table's note says)."""
    convs = sum(2 * c * WIDTH * KERNEL * s * s for c, s in zip(IN_CHANNELS, SIZES))
    plain = conv4_rows[conv4_rows["conv"] == "plain"].iloc[0]
    assert plain["gflops"] == pytest.approx((convs + 2 * FEATURES * WAYS) / 1e9, abs=5e-5)
    assert plain["params_vs_plain"] == 1 and plain["gflops_vs_plain"] == 1
