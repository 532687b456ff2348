"""Command-line options shared by several subcommands (backbone and conv kind)."""

from __future__ import annotations

import argparse

from metaacdc.convs import ACDC_SHARES, KERNEL_SHARES, ConvKind, conv_kind
from metaacdc.errors import ConfigError, check_choice


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--backbone, --acdc, --atoms, --atom-drop, --group-size, --kernel-sharing, ..."""
    from metaacdc.backbones import list_backbones

    parser.add_argument(
        "--backbone", default="conv4", help=f"one of: {', '.join(list_backbones())}"
    )
    parser.add_argument(
        "--acdc",
        default="none",
        help=f"ACDC sharing scope: none or one of {', '.join(ACDC_SHARES)}",
    )
    parser.add_argument("--atoms", type=int, default=8, help="atoms per ACDC layer (m)")
    parser.add_argument("--atom-drop", type=float, default=0.1, help="atom-drop rate p")
    parser.add_argument(
        "--group-size", type=int, default=None, help="channels per group for the g- variants"
    )
    parser.add_argument("--include-1x1", action="store_true", help="decompose 1x1 convs too")
    parser.add_argument(
        "--kernel-sharing",
        default="none",
        help=f"kernel-sharing baseline scope: none or one of {', '.join(KERNEL_SHARES)}",
    )
    parser.add_argument("--regulators", action="store_true", help="DACNN per-block regulators")


def conv_kind_from_args(args: argparse.Namespace) -> ConvKind:
    """The conv kind the options describe (ACDC and kernel sharing are exclusive)."""
    check_choice("--acdc", args.acdc, ("none", *ACDC_SHARES))
    check_choice("--kernel-sharing", args.kernel_sharing, ("none", *KERNEL_SHARES))
    if args.acdc != "none" and args.kernel_sharing != "none":
        raise ConfigError("--acdc and --kernel-sharing cannot be combined; choose one")
    if args.kernel_sharing != "none":
        return conv_kind(f"ks-{args.kernel_sharing}", regulators=args.regulators)
    if args.acdc == "none":
        return conv_kind("plain")
    share = args.acdc
    if args.group_size is not None and not share.startswith("g-"):
        share = f"g-{share}"
    return conv_kind(
        f"acdc-{share}",
        atoms=args.atoms,
        atom_drop=args.atom_drop,
        group_size=args.group_size,
        include_1x1=args.include_1x1,
    )
