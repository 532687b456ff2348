"""A user's backbone, registered once when this module is first imported, as the
custom-backbone example of docs/extending.md registers it."""

from __future__ import annotations

from torch import nn

from metaacdc.backbones import Backbone, register_backbone
from metaacdc.convs import ConvKind
from metaacdc.convs.norm import batch_norm

NAME = "toy-tiny"


@register_backbone(NAME, depth=2, image_size=40, first_order=True)
def tiny(conv: ConvKind, num_classes: int, image_size: int, in_channels: int) -> Backbone:
    """Two convs and a global average pool."""
    features = nn.Sequential(
        conv.make(in_channels, 8, 3, padding=1),
        batch_norm(8),
        nn.ReLU(),
        conv.make(8, 8, 3, padding=1),
        batch_norm(8),
        nn.ReLU(),
        conv.block_output(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return Backbone(features, 8, num_classes)
