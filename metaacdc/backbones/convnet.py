"""Conv4 / Conv6 (CloserLook): conv3x3(64, bias) -> BN -> ReLU [-> max-pool 2].

Where a block pools, it pools before the ReLU: max-pooling and ReLU commute exactly (ReLU is
monotone; ties resolve to the same element, whose gradient is the same), and the ReLU then
runs on a quarter of the activations. The ReLU works in place (nothing reads its input).
"""

from __future__ import annotations

from torch import nn

from metaacdc.backbones.base import Backbone, batch_norm
from metaacdc.backbones.registry import register_backbone
from metaacdc.convs import ConvKind
from metaacdc.errors import ConfigError

WIDTH = 64
POOLED_BLOCKS = 4


def _convnet(
    depth: int, conv: ConvKind, num_classes: int, image_size: int, in_channels: int
) -> Backbone:
    layers: list[nn.Module] = []
    size = image_size
    for index in range(depth):
        block: list[nn.Module] = [
            conv.make(in_channels if index == 0 else WIDTH, WIDTH, 3, padding=1, bias=True),
            batch_norm(WIDTH),
        ]
        if index < POOLED_BLOCKS:
            block.append(nn.MaxPool2d(2))
            size //= 2
        block += [nn.ReLU(inplace=True), conv.block_output(WIDTH)]
        layers.append(nn.Sequential(*block))
    if size < 1:
        raise ConfigError(f"image_size={image_size} is too small for conv{depth}; need >= 16")
    layers.append(nn.Flatten())
    return Backbone(nn.Sequential(*layers), WIDTH * size * size, num_classes)


@register_backbone("conv4")
def conv4(conv: ConvKind, num_classes: int, image_size: int, in_channels: int) -> Backbone:
    """Four conv blocks, all pooled; 84 px -> 64 x 5 x 5 = 1600-d features."""
    return _convnet(4, conv, num_classes, image_size, in_channels)


@register_backbone("conv6")
def conv6(conv: ConvKind, num_classes: int, image_size: int, in_channels: int) -> Backbone:
    """Six conv blocks, the first four pooled; 84 px -> 1600-d features."""
    return _convnet(6, conv, num_classes, image_size, in_channels)
