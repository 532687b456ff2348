"""Convolution kinds: what a backbone calls to build each conv (injected, not a flag).

A backbone calls ``kind.make(...)`` for every convolution and ``kind.block_output(width)`` at
the end of every block, then ``kind.finalize(model, example_input)`` once, which is where
cross-layer sharing (ACDC coefficients, anchored kernels) is tied up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from metaacdc.errors import ConfigError


class ConvKind(ABC):
    """Factory for the convolutions of a backbone."""

    #: short label used in summaries, run names and tables ("plain", "acdc-net", ...)
    label: str = "plain"

    @abstractmethod
    def make(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> nn.Module:
        """One convolution ``in_channels -> out_channels``."""

    def block_output(self, channels: int) -> nn.Module:
        """A module appended to the output of each block (identity unless a kind adds one)."""
        return nn.Identity()

    def finalize(self, model: nn.Module, example_input: Tensor | None = None) -> nn.Module:
        """Tie parameters across the finished model; ``example_input`` reveals feature sizes."""
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"


def kaiming_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """Design §4 init: weight ~ N(0, 2 / (k*k*c_out)), bias 0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class PlainConv(ConvKind):
    """Standard ``nn.Conv2d`` layers."""

    label = "plain"

    def make(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> nn.Module:
        return kaiming_conv(
            nn.Conv2d(in_channels, out_channels, _pair(kernel_size), stride, padding, bias=bias)
        )


ACDC_SHARES = ("layer", "block", "net", "g-layer", "g-block", "g-net")
KERNEL_SHARES = ("net", "stage")


def conv_kind(
    spec: str | ConvKind = "plain",
    *,
    atoms: int = 8,
    atom_drop: float = 0.1,
    group_size: int | None = None,
    include_1x1: bool = False,
    regulators: bool = False,
) -> ConvKind:
    """Build a conv kind from a spec string (a ConvKind passes through unchanged).

    Specs: ``plain`` (or ``none``); ``acdc-<share>`` with share in layer, block, net,
    g-layer, g-block, g-net (the ``g-`` variants take ``group_size``); ``ks-net`` and
    ``ks-stage`` for the kernel-sharing baseline (``regulators`` adds its per-block 1x1
    regulators).
    """
    if isinstance(spec, ConvKind):
        return spec
    from metaacdc.acdc.kind import ACDC
    from metaacdc.kernel_sharing import KernelSharing

    if spec in ("plain", "none"):
        return PlainConv()
    if spec.startswith("acdc-") and spec[5:] in ACDC_SHARES:
        return ACDC(
            share=spec[5:],
            atoms=atoms,
            atom_drop=atom_drop,
            group_size=group_size,
            include_1x1=include_1x1,
        )
    if spec.startswith("ks-") and spec[3:] in KERNEL_SHARES:
        return KernelSharing(scope=spec[3:], regulators=regulators)
    accepted = ["plain", *(f"acdc-{s}" for s in ACDC_SHARES), *(f"ks-{s}" for s in KERNEL_SHARES)]
    raise ConfigError(f"conv={spec!r} is not valid; accepted values: {', '.join(accepted)}")
