"""Convolution kinds: the interface a backbone builds its convs through, the registry of
kinds by name, the plain conv, the kernel-sharing baseline, and the sharing scopes and
batch norm they use. ACDC kinds live in :mod:`metaacdc.acdc` and register here."""

from metaacdc.convs import kernel_sharing as _kernel_sharing  # noqa: F401  (registers ks-*)
from metaacdc.convs.base import ConvKind, ConvSpec
from metaacdc.convs.plain import PlainConv, kaiming_conv
from metaacdc.convs.registry import conv_kind, list_conv_kinds, register_conv_kind

__all__ = [
    "ConvKind",
    "ConvSpec",
    "PlainConv",
    "conv_kind",
    "kaiming_conv",
    "list_conv_kinds",
    "register_conv_kind",
]
