"""Channel grouping for the ``ACDC-g-*`` variants (paper 001 §3.4).

A layer's channels are cut into groups of ``s``. With equal widths, ``g = c/s`` groups are
convolved separately, each by an ``s x s`` unit kernel ``A x D_u`` (own atoms ``D_u``, shared
``A``), and the outputs are mixed by a channel shuffle (ShuffleNet).

When widths differ (the paper: "each group in the shallow layer feeds multiple groups in the
deep layer"), the convolution uses ``G = min(c_in, c_out) / s`` groups:

* widening (``c_out = r * c_in``): each input group feeds ``r`` output groups, so a conv group
  is ``r`` units stacked along the output channels;
* narrowing (``c_in = r * c_out``): each output group sums ``r`` input groups, so a conv group
  is ``r`` units side by side along the input channels.

Either way the layer has ``G * r`` units, each with its own atoms. Both widths must be
multiples of ``s``; layers narrower than one group (an RGB stem) are handled by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from metaacdc.errors import ConfigError, check_positive_int


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle along dim 1: ``(g, c/g) -> (c/g, g)``."""
    if groups == 1:
        return x
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


@dataclass(frozen=True)
class GroupLayout:
    """How a grouped ACDC layer maps its ``s x s`` units onto a grouped convolution."""

    in_channels: int
    out_channels: int
    group_size: int
    conv_groups: int = field(init=False)
    out_repeat: int = field(init=False)
    in_repeat: int = field(init=False)

    def __post_init__(self) -> None:
        check_positive_int("group_size", self.group_size)
        s = self.group_size
        if self.in_channels % s or self.out_channels % s:
            divisors = [
                d
                for d in range(1, min(self.in_channels, self.out_channels) + 1)
                if self.in_channels % d == 0 and self.out_channels % d == 0
            ]
            raise ConfigError(
                f"group_size={s} must divide both in_channels={self.in_channels} and "
                f"out_channels={self.out_channels}; accepted values here: "
                f"{', '.join(map(str, divisors))}"
            )
        g_in, g_out = self.in_channels // s, self.out_channels // s
        groups = min(g_in, g_out)
        object.__setattr__(self, "conv_groups", groups)
        object.__setattr__(self, "out_repeat", g_out // groups)
        object.__setattr__(self, "in_repeat", g_in // groups)
        if max(g_in, g_out) % groups:
            raise ConfigError(
                f"in_channels={self.in_channels} and out_channels={self.out_channels} must be "
                f"multiples of one another for group_size={s}"
            )

    @property
    def repeat(self) -> int:
        """Units per conv group (``r``)."""
        return max(self.out_repeat, self.in_repeat)

    @property
    def units(self) -> int:
        """Number of ``s x s`` units, each with its own atoms."""
        return self.conv_groups * self.repeat

    @property
    def widening(self) -> bool:
        return self.out_repeat > 1

    def assemble(self, units: Tensor) -> Tensor:
        """``(units, s, s, kh, kw)`` unit kernels -> ``(c_out, c_in / G, kh, kw)`` conv weight."""
        s, r, g = self.group_size, self.repeat, self.conv_groups
        kh, kw = units.shape[-2:]
        if self.widening or r == 1:
            return units.reshape(g * r * s, s, kh, kw)
        return units.view(g, r, s, s, kh, kw).transpose(1, 2).reshape(g * s, r * s, kh, kw)

    def depthwise_atoms(self, atoms: Tensor) -> Tensor:
        """``(units, m, kh, kw)`` atoms -> the atoms each input channel is convolved with,
        ``(c_in, n, m, kh, kw)`` in input-channel order (``n = r`` when widening, else 1)."""
        s, r, g = self.group_size, self.repeat, self.conv_groups
        m, kh, kw = atoms.shape[1:]
        if self.widening:
            per_group = atoms.view(g, 1, r, m, kh, kw).expand(g, s, r, m, kh, kw)
        else:
            per_group = atoms.view(g, r, 1, m, kh, kw).expand(g, r, s, m, kh, kw)
        return per_group.reshape(self.in_channels, -1, m, kh, kw)

    def order_for_mixing(self, z: Tensor, atoms: int) -> Tensor:
        """Reorder atom-sub-layer channels so each unit's inputs are contiguous."""
        if not self.widening:
            return z
        s, r, g = self.group_size, self.repeat, self.conv_groups
        return z.unflatten(1, (g, s, r, atoms)).transpose(2, 3).flatten(1, 4)

    @property
    def mixing_groups(self) -> int:
        """``groups`` of the 1x1 coefficient sub-layer."""
        return self.units if self.widening else self.conv_groups

    def mixing_weight(self, coefficients: Tensor) -> Tensor:
        """``(s, s*m)`` shared coefficients -> the 1x1 coefficient sub-layer's weight."""
        if self.widening:
            weight = coefficients.repeat(self.units, 1)
        else:
            weight = coefficients.repeat(1, self.repeat).repeat(self.conv_groups, 1)
        return weight[..., None, None]
