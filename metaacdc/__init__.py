"""metaacdc: MAML over ACDC (atom-coefficient decomposed convolution) backbones."""

from metaacdc.backbones import create_backbone, list_backbones, register_backbone
from metaacdc.convs import ConvKind, conv_kind

__version__ = "0.1.0"
__all__ = ["ConvKind", "conv_kind", "create_backbone", "list_backbones", "register_backbone"]
