"""`metaacdc info`: architecture summary, parameter breakdown and FLOPs of a backbone, or
(``--table``) the parameter and FLOP table of every backbone x conv kind."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import Any

from metaacdc.cli.options import add_model_options, conv_kind_from_args
from metaacdc.errors import ConfigError, check_positive_int


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("info", help="architecture summary and parameter breakdown")
    add_model_options(parser, many_atoms=True)
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default 84; with --table each backbone's protocol size)",
    )
    parser.add_argument("--ways", type=int, default=5, help="classes of the head")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs of one forward")
    parser.add_argument(
        "--table",
        action="store_true",
        help="parameters and FLOPs of every --backbones x conv kind (plain, acdc-layer, "
        "acdc-block, acdc-net, acdc-g-net) x --atoms, vs plain",
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=None,
        help="with --table: the backbones (default: the five of the depth study)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="with --table: write OUT (.md) and its .csv"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.table:
        return run_table(args)
    for flag, value in (("--backbones", args.backbones), ("--out", args.out)):
        if value is not None:
            raise ConfigError(f"{flag} applies to --table only")
    if len(args.atoms) != 1:
        raise ConfigError("--atoms takes one value without --table")
    args = argparse.Namespace(**{**vars(args), "atoms": args.atoms[0]})
    image_size = 84 if args.image_size is None else args.image_size

    from metaacdc.backbones import create_backbone
    from metaacdc.reports.summary import conv_rows, count_parameters, format_summary, forward_flops

    kind = conv_kind_from_args(args)
    model = create_backbone(args.backbone, kind, num_classes=args.ways, image_size=image_size)
    title = (
        f"{args.backbone} with {kind.label} convolutions"
        + (f", m={args.atoms}" if kind.label.startswith("acdc") else "")
        + f", {args.ways}-way head, {image_size}px input, "
        f"{model.feature_dim}-d features"
    )
    flops = forward_flops(model, image_size) if args.flops else None
    print(format_summary(title, conv_rows(model, image_size), count_parameters(model), flops))
    return 0


@dataclasses.dataclass(frozen=True)
class _TableRequest:
    backbones: list[str]
    atoms: list[int]
    group_size: int
    ways: int
    image_size: int | None
    out: Path | None

    def command(self) -> str:
        """The canonical command line that makes this table."""
        words = ["metaacdc", "info", "--table", "--backbones", *self.backbones, "--atoms"]
        words += [str(m) for m in self.atoms]
        words += ["--group-size", str(self.group_size)]
        if self.ways != 5:
            words += ["--ways", str(self.ways)]
        if self.image_size is not None:
            words += ["--image-size", str(self.image_size)]
        if self.out is not None:
            words += ["--out", str(self.out)]
        return shlex.join(words)


def run_table(args: argparse.Namespace) -> int:
    from metaacdc.backbones import DEPTH_STUDY, list_backbones
    from metaacdc.errors import check_choice
    from metaacdc.reports.model_table import model_table, write_model_table

    if args.acdc != "none" or args.kernel_sharing != "none":
        raise ConfigError("--table covers every conv kind; drop --acdc/--kernel-sharing")
    backbones = args.backbones or list(DEPTH_STUDY)
    for backbone in backbones:
        check_choice("--backbones", backbone, list_backbones())
    for m in args.atoms:
        check_positive_int("--atoms", m)
    if args.out is not None and args.out.suffix != ".md":
        raise ConfigError(f"--out={str(args.out)!r} must end in .md (the .csv is written beside)")
    request = _TableRequest(
        backbones, list(args.atoms), args.group_size or 32, args.ways, args.image_size, args.out
    )
    table = model_table(
        request.backbones, request.atoms, request.group_size, request.ways, request.image_size
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if request.out is not None:
        for path in write_model_table(table, request.out, request.command()):
            print(path)
    return 0
