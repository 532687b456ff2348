"""Name -> constructor registry for backbones (refuses duplicates, like torchvision's), with
what the protocol needs to know of each (in the spirit of torchvision's weight ``meta``):
its depth, its protocol input size and its default MAML order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from metaacdc.backbones.base import Backbone
from metaacdc.convs.base import ConvKind
from metaacdc.convs.registry import conv_kind
from metaacdc.errors import ConfigError, check_choice, check_positive_int

BackboneBuilder = Callable[..., Backbone]


@dataclass(frozen=True)
class BackboneMeta:
    """What the protocol (design §4-5) reads of a backbone.

    Attributes:
        depth: its depth as the papers count it (Conv4: 4, ResNet18: 18); the x axis of
            the depth curves, which order their backbones by it.
        image_size: the protocol's input side (CloserLook: 84 px Conv, 224 px ResNets);
            a run's default ``image_size`` (Omniglot runs use 28 px whatever the backbone).
        first_order: whether MAML defaults to first order on it (CloserLook trained the
            ResNets first order: second order did not fit in memory).
    """

    depth: int
    image_size: int
    first_order: bool

    def __post_init__(self) -> None:
        check_positive_int("depth", self.depth)
        check_positive_int("image_size", self.image_size)
        if not isinstance(self.first_order, bool):
            raise ConfigError(f"first_order={self.first_order!r} is not valid; expected a bool")


@dataclass(frozen=True)
class _Entry:
    builder: BackboneBuilder
    meta: BackboneMeta


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str, *, depth: int, image_size: int, first_order: bool
) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering ``builder(conv, num_classes, image_size, in_channels, **kw)``
    with its :class:`BackboneMeta` (all three facts required: a default guessed for a new
    backbone would silently change its protocol).

    Raises:
        ValueError: the name is taken, or a fact is not valid.
    """
    meta = BackboneMeta(depth, image_size, first_order)

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"a backbone named {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, meta)
        return builder

    return decorate


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def backbone_meta(name: str) -> BackboneMeta:
    """The registered facts of backbone ``name``.

    Raises:
        ConfigError: no backbone of that name.
    """
    _check_name(name)
    return _REGISTRY[name].meta


def _check_name(name: str) -> None:
    check_choice("backbone", name, list_backbones())


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
    _check_name(name)
    check_positive_int("num_classes", num_classes)
    check_positive_int("image_size", image_size)
    check_positive_int("in_channels", in_channels)
    kind = conv_kind(conv)
    model = _REGISTRY[name].builder(
        conv=kind, num_classes=num_classes, image_size=image_size, in_channels=in_channels, **kwargs
    )
    model.conv_label = kind.label
    kind.finalize(model, torch.zeros(2, in_channels, image_size, image_size))
    return model
