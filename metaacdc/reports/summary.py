"""Architecture summaries: per-conv table, parameter breakdown and FLOPs of one forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from metaacdc.acdc.counting import ParameterCounts, count_parameters
from metaacdc.acdc.layer import ACDCConv2d
from metaacdc.convs.kernel_sharing import SharedKernelConv2d
from metaacdc.convs.sharing import find_sites

CONV_TYPES = (nn.Conv2d, ACDCConv2d, SharedKernelConv2d)


@dataclass(frozen=True)
class ConvRow:
    """One convolution as shown in a summary."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: str
    stride: int
    output: str
    shared: str


def conv_rows(model: nn.Module, image_size: int, in_channels: int = 3) -> list[ConvRow]:
    """One row per convolution, in module order, with its output size at ``image_size``."""
    example = torch.zeros(2, in_channels, image_size, image_size)
    sites = find_sites(model, lambda m: isinstance(m, CONV_TYPES), example)
    tags: dict[int, str] = {}
    rows = []
    for site in sites:
        module = site.module
        tensor = getattr(module, "coefficients", None)
        if tensor is None and isinstance(module, SharedKernelConv2d):
            tensor = module.weight
        shared = "-"
        if tensor is not None:
            shared = tags.setdefault(
                id(tensor), f"{'A' if isinstance(module, ACDCConv2d) else 'K'}{len(tags)}"
            )
        kh, kw = module.kernel_size  # type: ignore[misc]
        size = site.feature_size or (0, 0)
        rows.append(
            ConvRow(
                site.name,
                type(module).__name__,
                int(module.in_channels),  # type: ignore[arg-type]
                site.out_channels,
                f"{kh}x{kw}",
                site.stride[0],
                f"{size[0]}x{size[1]}",
                shared,
            )
        )
    return rows


def forward_flops(model: nn.Module, image_size: int, in_channels: int = 3, batch: int = 1) -> int:
    """FLOPs (multiply and add counted separately) of one eval-mode forward of ``batch``
    images, kernel reconstruction included, as counted by ``torch.utils.flop_counter``."""
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(batch, in_channels, image_size, image_size))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def format_summary(
    title: str, rows: list[ConvRow], counts: ParameterCounts, flops: int | None = None
) -> str:
    """The text ``metaacdc info`` prints."""
    header = ("layer", "type", "in", "out", "kernel", "stride", "output", "shares")
    table = [header] + [
        (
            r.name,
            r.kind,
            str(r.in_channels),
            str(r.out_channels),
            r.kernel,
            str(r.stride),
            r.output,
            r.shared,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [title, ""]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lines += [
        "",
        f"parameters     {counts.total:>12,}",
        f"  coefficients {counts.coefficients:>12,}",
        f"  atoms        {counts.atoms:>12,}",
        f"  other        {counts.other:>12,}",
    ]
    if flops is not None:
        lines.append(f"FLOPs/image    {flops:>12,}  ({flops / 1e9:.3f} GFLOPs)")
    return "\n".join(lines)


__all__ = ["ConvRow", "conv_rows", "count_parameters", "format_summary", "forward_flops"]
