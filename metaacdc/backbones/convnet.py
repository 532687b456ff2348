"""Conv4 / Conv6 (CloserLook): conv3x3(64, bias) -> BN -> ReLU [-> max-pool 2].

Where a block pools, it pools before the ReLU: max-pooling and ReLU commute exactly (ReLU is
monotone; ties resolve to the same element, whose gradient is the same), and the ReLU then
runs on a quarter of the activations. The ReLU works in place (nothing reads its input).
Where nothing is differentiated, a pooled block also pools before applying the batch norm's
per-channel map (:mod:`metaacdc.backbones.pool_first`, one of the CPU fast paths of
:mod:`metaacdc.runtime.fast_paths`).
"""

from __future__ import annotations

from torch import Tensor, nn

from metaacdc.backbones.base import Backbone
from metaacdc.backbones.pool_first import pool_first_applies, pooled_batch_norm
from metaacdc.backbones.registry import register_backbone
from metaacdc.convs.base import ConvKind
from metaacdc.convs.norm import batch_norm
from metaacdc.errors import ConfigError

WIDTH = 64
POOLED_BLOCKS = 4


class ConvBlock(nn.Sequential):
    """conv -> BN [-> max-pool] -> ReLU -> block output, an ``nn.Sequential`` (parameter
    names ``0.weight``, ``1.weight``, ...) that pools before the batch norm's map where
    :func:`~metaacdc.backbones.pool_first.pool_first_applies` (with the CPU fast paths off,
    :func:`~metaacdc.runtime.fast_paths.cpu_fast_paths`, it never does: the textbook
    order)."""

    def forward(self, x: Tensor) -> Tensor:
        conv, norm, after_norm, *rest = self
        x = conv(x)
        if (
            isinstance(norm, nn.BatchNorm2d)
            and isinstance(after_norm, nn.MaxPool2d)
            and pool_first_applies(norm, x)
        ):
            x = pooled_batch_norm(x, norm, after_norm)
        else:
            x = after_norm(norm(x))
        for module in rest:
            x = module(x)
        return x


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
        layers.append(ConvBlock(*block))
    if size < 1:
        raise ConfigError(f"image_size={image_size} is too small for conv{depth}; need >= 16")
    layers.append(nn.Flatten())
    return Backbone(nn.Sequential(*layers), WIDTH * size * size, num_classes)


@register_backbone("conv4", depth=4, image_size=84, first_order=False)
def conv4(conv: ConvKind, num_classes: int, image_size: int, in_channels: int) -> Backbone:
    """Four conv blocks, all pooled; 84 px -> 64 x 5 x 5 = 1600-d features."""
    return _convnet(4, conv, num_classes, image_size, in_channels)


@register_backbone("conv6", depth=6, image_size=84, first_order=False)
def conv6(conv: ConvKind, num_classes: int, image_size: int, in_channels: int) -> Backbone:
    """Six conv blocks, the first four pooled; 84 px -> 1600-d features."""
    return _convnet(6, conv, num_classes, image_size, in_channels)
