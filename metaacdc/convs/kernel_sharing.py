"""Kernel-sharing baseline: "deep anchored" networks (paper 003, DACNN).

Whole k x k kernels (k > 1) are shared by every conv of equal kernel shape in a scope:
``net`` (one anchor per shape for the whole network) or ``stage`` (DACNN-mix: per run of
layers with the same width and feature size, i.e. between poolings). Each layer keeps its
own bias and BN; 1x1 convs (projection shortcuts) stay unshared. Optional per-block
*regulators* (unshared 1x1 conv + BN + ReLU) are appended to each block's output.

It contrasts ACDC's coefficient sharing with whole-kernel sharing in the same depth study.
"""

from __future__ import annotations

import functools

from torch import Tensor, nn
from torch.nn import functional as F

from metaacdc.convs.base import ConvKind, ConvSpec
from metaacdc.convs.norm import batch_norm
from metaacdc.convs.plain import PlainConv, kaiming_conv
from metaacdc.convs.registry import register_conv_kind
from metaacdc.convs.sharing import find_sites, scope_groups
from metaacdc.errors import check_choice

#: the baseline's scope names (``ks-<name>``) as sharing scopes
#: (:data:`~metaacdc.convs.sharing.SCOPES`): the DACNN paper's "stage" is a sharing block
SCOPES: dict[str, str] = {"net": "net", "stage": "block"}


class SharedKernelConv2d(nn.Module):
    """A convolution whose ``weight`` may be the same Parameter as other layers' weights."""

    weight: nn.Parameter

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__()
        dense = kaiming_conv(spec.dense())
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        self.kernel_size, self.stride, self.padding = dense.kernel_size, dense.stride, dense.padding
        self.weight = nn.Parameter(dense.weight.detach())
        self.bias = None if dense.bias is None else nn.Parameter(dense.bias.detach())

    def share_weight(self, weight: nn.Parameter) -> None:
        """Use ``weight`` (shape-compatible, typically another layer's) as this kernel."""
        if weight.shape != self.weight.shape:
            raise ValueError(
                f"cannot share a {tuple(weight.shape)} kernel with {tuple(self.weight.shape)}"
            )
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


class Regulator(nn.Sequential):
    """DACNN regulator: an unshared 1x1 conv -> BN -> ReLU on a block's output."""

    def __init__(self, channels: int) -> None:
        super().__init__(PlainConv().make(channels, channels, 1), batch_norm(channels), nn.ReLU())


class KernelSharing(ConvKind):
    """Conv kind of the anchored-kernel baseline (``ks-net`` or ``ks-stage``)."""

    def __init__(self, scope: str = "net", regulators: bool = False) -> None:
        check_choice("kernel sharing scope", scope, tuple(SCOPES))
        self.scope = scope
        self.regulators = regulators
        self.label = f"ks-{scope}" + ("+reg" if regulators else "")

    def build(self, spec: ConvSpec) -> nn.Module:
        if spec.kernel_size == 1:
            return PlainConv().build(spec)
        return SharedKernelConv2d(spec)

    def block_output(self, channels: int) -> nn.Module:
        return Regulator(channels) if self.regulators else nn.Identity()

    def finalize(self, model: nn.Module, example_input: Tensor | None = None) -> nn.Module:
        sites = find_sites(model, lambda m: isinstance(m, SharedKernelConv2d), example_input)
        for group in scope_groups(sites, SCOPES[self.scope]):
            anchors: dict[tuple[int, ...], nn.Parameter] = {}
            for site in group:
                layer: SharedKernelConv2d = site.module  # type: ignore[assignment]
                shape = tuple(layer.weight.shape)
                if shape in anchors:
                    layer.share_weight(anchors[shape])
                else:
                    anchors[shape] = layer.weight
        return model


for _scope in SCOPES:
    register_conv_kind(f"ks-{_scope}", options=("regulators",))(
        functools.partial(KernelSharing, _scope)
    )
