"""The conv-kind interface: what a backbone calls to build each conv (injected, not a flag).

A backbone calls ``kind.make(...)`` for every convolution and ``kind.block_output(width)`` at
the end of every block, then ``kind.finalize(model, example_input)`` once, which is where
cross-layer sharing (ACDC coefficients, anchored kernels) is tied up. A kind implements
``build(spec)``: ``make`` passes it the convolution asked for as one :class:`ConvSpec`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class ConvSpec:
    """One convolution a backbone asks for (square kernel, as ``nn.Conv2d`` takes it)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    bias: bool = False

    def dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` of this shape (PyTorch's default initialisation)."""
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            bias=self.bias,
        )


class ConvKind(ABC):
    """Factory for the convolutions of a backbone."""

    #: short label used in summaries, run names and tables ("plain", "acdc-net", ...)
    label: str = "plain"

    def make(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> nn.Module:
        """One convolution ``in_channels -> out_channels`` (what backbones call)."""
        return self.build(ConvSpec(in_channels, out_channels, kernel_size, stride, padding, bias))

    @abstractmethod
    def build(self, spec: ConvSpec) -> nn.Module:
        """The module of the convolution ``spec`` describes."""

    def block_output(self, channels: int) -> nn.Module:
        """A module appended to the output of each block (identity unless a kind adds one)."""
        return nn.Identity()

    def finalize(self, model: nn.Module, example_input: Tensor | None = None) -> nn.Module:
        """Tie parameters across the finished model; ``example_input`` reveals feature sizes."""
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"
