"""metaacdc: MAML over ACDC (atom-coefficient decomposed convolution) backbones."""

from typing import TYPE_CHECKING, Any

from metaacdc import acdc as _acdc  # noqa: F401  (registers the acdc-* conv kinds)
from metaacdc.backbones import create_backbone, list_backbones, register_backbone
from metaacdc.convs import ConvKind, conv_kind, list_conv_kinds, register_conv_kind

if TYPE_CHECKING:
    from metaacdc.api import load

__version__ = "0.1.0"
__all__ = [
    "ConvKind",
    "conv_kind",
    "create_backbone",
    "list_backbones",
    "list_conv_kinds",
    "load",
    "register_backbone",
    "register_conv_kind",
]


def __getattr__(name: str) -> Any:
    # `load` pulls in learn2learn (seconds to import): only when first asked for
    if name == "load":
        from metaacdc.api import load

        return load
    raise AttributeError(f"module 'metaacdc' has no attribute {name!r}")
