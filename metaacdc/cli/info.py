"""`metaacdc info`: architecture summary, parameter breakdown and FLOPs of a backbone."""

from __future__ import annotations

import argparse
from typing import Any

from metaacdc.cli.options import add_model_options, conv_kind_from_args


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("info", help="architecture summary and parameter breakdown")
    add_model_options(parser)
    parser.add_argument("--image-size", type=int, default=84, help="input side in pixels")
    parser.add_argument("--ways", type=int, default=5, help="classes of the head")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs of one forward")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from metaacdc.backbones import create_backbone
    from metaacdc.summary import conv_rows, count_parameters, format_summary, forward_flops

    kind = conv_kind_from_args(args)
    model = create_backbone(args.backbone, kind, num_classes=args.ways, image_size=args.image_size)
    title = (
        f"{args.backbone} with {kind.label} convolutions"
        + (f", m={args.atoms}" if kind.label.startswith("acdc") else "")
        + f", {args.ways}-way head, {args.image_size}px input, "
        f"{model.feature_dim}-d features"
    )
    flops = forward_flops(model, args.image_size) if args.flops else None
    print(format_summary(title, conv_rows(model, args.image_size), count_parameters(model), flops))
    return 0
