"""ACDC: atom-coefficient decomposed convolutions with coefficients shared per scope.

Use :func:`convert` on any model, :class:`ACDC` as a backbone's conv kind, or
:class:`ACDCConv2d` directly as a replacement for ``nn.Conv2d``.
"""

from metaacdc.acdc.counting import ParameterCounts, count_parameters
from metaacdc.acdc.grouping import GroupLayout, channel_shuffle
from metaacdc.acdc.kind import ACDC, convert
from metaacdc.acdc.layer import ACDCConv2d
from metaacdc.acdc.tying import SHARES, tie_coefficients

__all__ = [
    "ACDC",
    "SHARES",
    "ACDCConv2d",
    "GroupLayout",
    "ParameterCounts",
    "channel_shuffle",
    "convert",
    "count_parameters",
    "tie_coefficients",
]
