"""The plain convolution: a standard ``nn.Conv2d`` with the design's initialisation."""

from __future__ import annotations

from torch import nn

from metaacdc.convs.base import ConvKind, ConvSpec
from metaacdc.convs.registry import register_conv_kind


def kaiming_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """Design §4 init: weight ~ N(0, 2 / (k*k*c_out)), bias 0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


@register_conv_kind("plain", aliases=("none",))
class PlainConv(ConvKind):
    """Standard ``nn.Conv2d`` layers."""

    label = "plain"

    def build(self, spec: ConvSpec) -> nn.Module:
        return kaiming_conv(spec.dense())
