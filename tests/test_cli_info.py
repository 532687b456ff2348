"""`metaacdc info`: summary, parameter breakdown, FLOPs, and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from metaacdc.acdc import count_parameters
from metaacdc.backbones import create_backbone
from metaacdc.cli import main
from metaacdc.convs import conv_kind
from metaacdc.summary import forward_flops


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
        (["--atoms"], "expected one argument"),
        (["--image-size", "big"], "invalid int value: 'big'"),
        (["--image-size", "4"], "image_size=4 is too small"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metaacdc", "info", *argv], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
