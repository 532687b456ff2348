"""Command-line options shared by several subcommands (backbone and conv kind), and their
translation into settings for :func:`metaacdc.config.build_config`."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from metaacdc.acdc import SHARES as ACDC_SHARES
from metaacdc.convs import ConvKind, conv_kind
from metaacdc.convs.kernel_sharing import SCOPES as KERNEL_SCOPES
from metaacdc.errors import ConfigError, check_choice

KERNEL_SHARES = tuple(KERNEL_SCOPES)


def add_model_options(parser: argparse.ArgumentParser, many_atoms: bool = False) -> None:
    """--backbone, --acdc, --atoms, --atom-drop, --group-size, --kernel-sharing, ...;
    ``many_atoms`` lets ``--atoms`` take several values (a list in the namespace)."""
    from metaacdc.backbones import list_backbones

    parser.add_argument(
        "--backbone", default="conv4", help=f"one of: {', '.join(list_backbones())}"
    )
    parser.add_argument(
        "--acdc",
        default="none",
        help=f"ACDC sharing scope: none or one of {', '.join(ACDC_SHARES)}",
    )
    if many_atoms:
        parser.add_argument(
            "--atoms", type=int, nargs="+", default=[8], help="atoms per ACDC layer (m)"
        )
    else:
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
    add_conv_option(parser)


def add_conv_option(parser: argparse.ArgumentParser) -> None:
    """--conv NAME: any registered conv kind, a user's included (instead of --acdc or
    --kernel-sharing)."""
    parser.add_argument(
        "--conv",
        default=None,
        help="a registered conv kind by name (plain, acdc-net, ks-stage, or your own); "
        "instead of --acdc / --kernel-sharing",
    )


def given(args: argparse.Namespace, dests: Iterable[str]) -> dict[str, Any]:
    """The settings among ``dests`` given on the command line (options left unset are
    ``None`` in the namespace and override nothing)."""
    return {dest: getattr(args, dest) for dest in dests if getattr(args, dest, None) is not None}


def conv_spec(acdc: str | None, kernel_sharing: str | None, conv: str | None = None) -> str | None:
    """The conv-kind spec (``plain``, ``acdc-<share>``, ``ks-<scope>``, or ``--conv``'s
    registered name) that ``--acdc`` / ``--kernel-sharing`` / ``--conv`` describe, or
    ``None`` when none is given. They are exclusive. A ``--group-size`` is a setting of its
    own: the kind it makes of an ACDC scope is named by :func:`metaacdc.config.resolve`
    (and built by :class:`~metaacdc.acdc.ACDC`)."""
    if conv is not None:
        if acdc not in (None, "none") or kernel_sharing not in (None, "none"):
            raise ConfigError("--conv cannot be combined with --acdc or --kernel-sharing")
        return conv
    if acdc is not None:
        check_choice("--acdc", acdc, ("none", *ACDC_SHARES))
    if kernel_sharing is not None:
        check_choice("--kernel-sharing", kernel_sharing, ("none", *KERNEL_SHARES))
    if acdc not in (None, "none") and kernel_sharing not in (None, "none"):
        raise ConfigError("--acdc and --kernel-sharing cannot be combined; choose one")
    if kernel_sharing not in (None, "none"):
        return f"ks-{kernel_sharing}"
    if acdc is None and kernel_sharing is None:
        return None
    if acdc in (None, "none"):
        return "plain"
    return f"acdc-{acdc}"


def conv_kind_from_args(args: argparse.Namespace) -> ConvKind:
    """The conv kind the options of :func:`add_model_options` describe."""
    return conv_kind(
        conv_spec(args.acdc, args.kernel_sharing, args.conv) or "plain",
        atoms=args.atoms,
        atom_drop=args.atom_drop,
        group_size=args.group_size,
        include_1x1=args.include_1x1,
        regulators=args.regulators,
    )
