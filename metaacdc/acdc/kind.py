"""ACDC as a conv kind for the backbones, and ``convert`` for any existing model."""

from __future__ import annotations

import functools

from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from metaacdc.acdc.layer import ACDCConv2d, Path
from metaacdc.acdc.tying import (
    SHARES,
    grouped_spec,
    layer_group_size,
    split_share,
    tie_coefficients,
)
from metaacdc.convs.base import ConvKind, ConvSpec
from metaacdc.convs.plain import kaiming_conv
from metaacdc.convs.registry import register_conv_kind
from metaacdc.errors import check_positive_int, check_probability


class ACDC(ConvKind):
    """Build every k x k conv (k > 1; 1x1 too with ``include_1x1``) as an :class:`ACDCConv2d`
    and share coefficients within ``share`` (layer, block, net, g-layer, g-block, g-net)."""

    def __init__(
        self,
        share: str = "net",
        atoms: int = 8,
        atom_drop: float = 0.1,
        group_size: int | None = None,
        include_1x1: bool = False,
        path: Path = "auto",
    ) -> None:
        self.scope, self.group_size = split_share(share, group_size)
        check_positive_int("atoms", atoms)
        check_probability("atom_drop", atom_drop)
        self.atoms = atoms
        self.atom_drop = atom_drop
        self.include_1x1 = include_1x1
        self.path: Path = path
        self.label = grouped_spec(f"acdc-{self.scope}", self.group_size)

    def decomposes(self, kernel_size: tuple[int, int]) -> bool:
        """Whether a conv of this kernel size becomes an ACDC layer."""
        return self.include_1x1 or kernel_size[0] * kernel_size[1] > 1

    def build(self, spec: ConvSpec) -> nn.Module:
        if not self.decomposes(_pair(spec.kernel_size)):
            return kaiming_conv(spec.dense())
        return ACDCConv2d(
            spec.in_channels,
            spec.out_channels,
            spec.kernel_size,
            spec.stride,
            spec.padding,
            bias=spec.bias,
            atoms=self.atoms,
            atom_drop=self.atom_drop,
            group_size=layer_group_size(spec.in_channels, self.group_size),
            path=self.path,
        )

    def finalize(self, model: nn.Module, example_input: Tensor | None = None) -> nn.Module:
        return tie_coefficients(model, self.scope, example_input)

    def from_conv(self, conv: nn.Conv2d) -> ACDCConv2d:
        """An ACDC layer with the hyper-parameters (and bias values) of ``conv``."""
        layer = ACDCConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            atoms=self.atoms,
            atom_drop=self.atom_drop,
            group_size=layer_group_size(conv.in_channels, self.group_size),
            path=self.path,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        if conv.bias is not None and layer.bias is not None:
            layer.bias.data.copy_(conv.bias.data)
        return layer


def convert(
    model: nn.Module,
    share: str = "net",
    atoms: int = 8,
    group_size: int | None = None,
    atom_drop: float = 0.1,
    include_1x1: bool = False,
    example_input: Tensor | None = None,
    path: Path = "auto",
) -> nn.Module:
    """Replace the ``nn.Conv2d`` modules of ``model`` by ACDC layers, in place.

    Every k x k conv with k > 1 (and 1x1 convs with ``include_1x1``) becomes an
    :class:`ACDCConv2d` with the same hyper-parameters and bias; its dense weight is dropped
    (a fresh decomposition is initialised). Everything else is kept. Coefficients are then
    shared within ``share``: ``layer`` (decomposition only), ``block`` (runs of consecutive
    convs, in module order, with the same output width and feature size) or ``net``;
    ``g-layer``/``g-block``/``g-net`` or ``group_size=s`` give the grouped variants.

    ``example_input`` (one small batch, e.g. ``torch.zeros(2, 3, 224, 224)``) lets block
    detection see feature sizes, so pooling splits blocks; without it only a change of
    width or a stride other than 1 does. Returns ``model``.
    """
    kind = ACDC(share, atoms, atom_drop, group_size, include_1x1, path)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and kind.decomposes(module.kernel_size)  # type: ignore[arg-type]
    ]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, kind.from_conv(conv))
    return kind.finalize(model, example_input)


for _share in SHARES:
    register_conv_kind(
        f"acdc-{_share}", options=("atoms", "atom_drop", "group_size", "include_1x1")
    )(functools.partial(ACDC, _share))
