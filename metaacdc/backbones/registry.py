"""Name -> constructor registry for backbones (refuses duplicates, like torchvision's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from metaacdc.backbones.base import Backbone
from metaacdc.convs.base import ConvKind
from metaacdc.convs.registry import conv_kind
from metaacdc.errors import ConfigError, check_positive_int

BackboneBuilder = Callable[..., Backbone]
_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering ``builder(conv, num_classes, image_size, in_channels, **kw)``."""

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"a backbone named {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def create_backbone(
    name: str,
    conv: str | ConvKind = "plain",
    *,
    num_classes: int = 5,
    image_size: int = 84,
    in_channels: int = 3,
    **kwargs: Any,
) -> Backbone:
    """Build backbone ``name`` with convolutions from ``conv`` (a ConvKind or a spec such as
    ``"acdc-net"``; see :func:`metaacdc.convs.conv_kind`) and an ``num_classes``-way head.

    ``image_size`` is the side of the square input; the feature size follows from it.
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"backbone={name!r} is not valid; accepted values: {', '.join(list_backbones())}"
        )
    check_positive_int("num_classes", num_classes)
    check_positive_int("image_size", image_size)
    check_positive_int("in_channels", in_channels)
    kind = conv_kind(conv)
    model = _REGISTRY[name](
        conv=kind, num_classes=num_classes, image_size=image_size, in_channels=in_channels, **kwargs
    )
    model.conv_label = kind.label
    kind.finalize(model, torch.zeros(2, in_channels, image_size, image_size))
    return model
