"""A user's conv kind, registered once when this module is first imported (as a user's own
module, or a plugin named by an entry point, would register it)."""

from __future__ import annotations

from torch import nn

from metaacdc.convs import ConvKind, ConvSpec, PlainConv, register_conv_kind

NAME = "toy-wide"


@register_conv_kind(NAME, options=("atoms",))
class ToyKind(ConvKind):
    """Plain convolutions, with a label that records the ``atoms`` setting it was given."""

    def __init__(self, atoms: int) -> None:
        self.atoms = atoms
        self.label = f"{NAME}-{atoms}"

    def build(self, spec: ConvSpec) -> nn.Module:
        return PlainConv().build(spec)
