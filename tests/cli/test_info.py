"""`metaacdc info`: summary, parameter breakdown, FLOPs, and one-line errors."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from metaacdc.acdc import count_parameters
from metaacdc.backbones import create_backbone
from metaacdc.cli import main
from metaacdc.convs import conv_kind
from metaacdc.reports.model_table import TABLE_COLUMNS, TABLE_CONVS
from metaacdc.reports.summary import forward_flops
from tests.command_line import run_in_process, run_process
from tests.conftest import REPO


def test_info_prints_breakdown_matching_count_parameters(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--backbone", "resnet18", "--acdc", "net", "--atoms", "8"]) == 0
    out = capsys.readouterr().out
    counts = count_parameters(create_backbone("resnet18", "acdc-net", image_size=84))
    for label, value in [
        ("parameters", counts.total),
        ("coefficients", counts.coefficients),
        ("atoms", counts.atoms),
        ("other", counts.other),
    ]:
        assert re.search(rf"{label}\s+{value:,}\b", out), f"{label} {value:,} missing in\n{out}"
    assert "features.7.1.conv2" in out and "512x512" not in out.split("\n")[0]


def test_info_flops_of_plain_conv4_equal_hand_count(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--backbone", "conv4", "--flops", "--image-size", "84"]) == 0
    out = capsys.readouterr().out
    # conv MACs: 84^2*3*64*9 + 42^2*64*64*9 + 21^2*... + 10^2*...; linear 1600*5; FLOPs = 2 MACs
    macs = 9 * 64 * (84 * 84 * 3 + 64 * (42 * 42 + 21 * 21 + 10 * 10)) + 1600 * 5
    assert re.search(rf"FLOPs/image\s+{2 * macs:,}\s", out), out


def test_grouped_acdc_cuts_flops() -> None:
    plain = forward_flops(create_backbone("resnet18", "plain", image_size=84), 84)
    grouped_kind = conv_kind("acdc-g-net", group_size=32)
    grouped = forward_flops(create_backbone("resnet18", grouped_kind, image_size=84), 84)
    # 64-wide stage: 2 groups of 32, 512-wide: 16; the RGB stem is not grouped
    assert grouped < plain / 3


def test_group_size_option_selects_grouped_variant(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--backbone", "conv4", "--acdc", "net", "--group-size", "16"]) == 0
    assert "acdc-g-net" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backbone", "resnet50"], "backbone='resnet50' is not valid"),
        (["--acdc", "everything"], "--acdc='everything' is not valid; accepted values: none"),
        (["--acdc", "net", "--atoms", "0"], "atoms=0"),
        (["--acdc", "g-net"], "needs group_size"),
        (["--acdc", "net", "--group-size", "48"], "group_size=48"),
        (["--acdc", "net", "--kernel-sharing", "net"], "cannot be combined"),
        (["--kernel-sharing", "layer"], "--kernel-sharing='layer' is not valid"),
        (["--atoms"], "expected at least one argument"),
        (["--atoms", "8", "16"], "--atoms takes one value without --table"),
        (["--out", "x.md"], "--out applies to --table only"),
        (["--table", "--backbones", "vgg"], "--backbones='vgg' is not valid"),
        (["--table", "--acdc", "net"], "--table covers every conv kind"),
        (["--table", "--atoms", "0"], "--atoms=0 is not valid"),
        (["--table", "--out", "table.csv"], "must end in .md"),
        (["--image-size", "big"], "invalid int value: 'big'"),
        (["--image-size", "4"], "image_size=4 is too small"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    argv: list[str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert message in run_in_process(["info", *argv], capfd).one_error_line()


def test_a_bad_option_is_one_line_in_a_real_process() -> None:
    """The table above runs in this process; this case runs as the console script does."""
    line = run_process(["info", "--backbone", "resnet50"]).one_error_line()
    assert "backbone='resnet50' is not valid" in line


def test_table_of_conv4_at_two_atom_counts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "docs" / "table.md"
    argv = ["info", "--table", "--backbones", "conv4", "--atoms", "8", "16", "--group-size", "32"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    table = pd.read_csv(out.with_suffix(".csv"))
    assert tuple(table.columns) == TABLE_COLUMNS
    # plain once, then every ACDC kind at m = 8 and m = 16; Conv4 at its protocol 84 px
    assert list(table["conv"]) == ["plain", *TABLE_CONVS[1:], *TABLE_CONVS[1:]]
    assert list(table["atoms"]) == ["-"] + ["8"] * 4 + ["16"] * 4
    assert set(table["image_size"]) == {84}
    assert list(table["group_size"]) == ["-"] * 4 + ["32"] + ["-"] * 3 + ["32"]
    plain = table.iloc[0]
    assert plain["params_vs_plain"] == 1 and plain["gflops_vs_plain"] == 1
    assert plain["parameters"] == count_parameters(create_backbone("conv4", "plain")).total
    assert plain["parameters"] - plain["backbone_parameters"] == 64 * 25 * 5 + 5  # the head
    net8 = table[(table["conv"] == "acdc-net") & (table["atoms"] == "8")].iloc[0]
    counts = count_parameters(create_backbone("conv4", conv_kind("acdc-net", atoms=8)))
    assert (net8["parameters"], net8["coefficients"]) == (counts.total, counts.coefficients)
    assert net8["params_vs_plain"] < 0.5  # one shared A (64x64x8) instead of four kernels
    # the command that made the file is on top of it, and reproduces this table
    text = out.read_text()
    command = re.search(r"```bash\n(.*)\n```", text).group(1)  # type: ignore[union-attr]
    assert shlex.split(command)[1:] == argv
    assert "| " + " | ".join(TABLE_COLUMNS) + " |" in text
    assert "acdc-g-net" in capsys.readouterr().out


def test_committed_model_table_is_what_its_command_writes(tmp_path: Path) -> None:
    """The Conv4 rows of docs/model_table.csv equal a fresh run of its own command."""
    # Golden values: docs/model_table.csv is the code's own output, committed at 64cf7c0
    # (2026-11-22). Its neighbour, tests/reports/test_model_table.py, recomputes the Conv4
    # rows' parameter counts and plain FLOPs by hand from the architecture.
    text = (REPO / "docs" / "model_table.md").read_text()
    command = re.search(r"```bash\n(.*)\n```", text).group(1)  # type: ignore[union-attr]
    argv = shlex.split(command)[1:]
    backbones = argv[argv.index("--backbones") + 1 : argv.index("--atoms")]
    argv[argv.index("--backbones") + 1 : argv.index("--atoms")] = ["conv4"]
    argv[argv.index("--out") + 1] = str(tmp_path / "table.md")
    assert backbones == ["conv4", "conv6", "resnet10", "resnet18", "resnet34"]
    assert main(argv) == 0
    fresh = pd.read_csv(tmp_path / "table.csv", dtype=str)
    committed = pd.read_csv(REPO / "docs" / "model_table.csv", dtype=str)
    pd.testing.assert_frame_equal(committed[committed["backbone"] == "conv4"], fresh)
