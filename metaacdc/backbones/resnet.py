"""ResNet10 / 18 / 34 with basic blocks, as in CloserLook (design §4)."""

from __future__ import annotations

from torch import Tensor, nn

from metaacdc.backbones.base import Backbone
from metaacdc.backbones.registry import register_backbone
from metaacdc.convs.base import ConvKind
from metaacdc.convs.norm import batch_norm
from metaacdc.errors import ConfigError

WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus a 1x1 projection shortcut when the
    width changes; ReLU after the sum."""

    def __init__(self, conv: ConvKind, in_width: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv.make(in_width, width, 3, stride=stride, padding=1)
        self.bn1 = batch_norm(width)
        self.conv2 = conv.make(width, width, 3, padding=1)
        self.bn2 = batch_norm(width)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if in_width != width or stride != 1:
            self.shortcut = nn.Sequential(
                conv.make(in_width, width, 1, stride=stride), batch_norm(width)
            )
        self.output = conv.block_output(width)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.output(self.relu(out + self.shortcut(x)))


def _resnet(
    blocks_per_stage: tuple[int, int, int, int],
    conv: ConvKind,
    num_classes: int,
    image_size: int,
    in_channels: int,
) -> Backbone:
    if image_size < 8:
        raise ConfigError(f"image_size={image_size} is too small for a ResNet; need >= 8")
    layers: list[nn.Module] = [
        conv.make(in_channels, WIDTHS[0], 7, stride=2, padding=3),
        batch_norm(WIDTHS[0]),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    in_width = WIDTHS[0]
    for stage, (width, count) in enumerate(zip(WIDTHS, blocks_per_stage)):
        stage_blocks = []
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            stage_blocks.append(BasicBlock(conv, in_width, width, stride))
            in_width = width
        layers.append(nn.Sequential(*stage_blocks))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Backbone(nn.Sequential(*layers), WIDTHS[-1], num_classes)


@register_backbone("resnet10", depth=10, image_size=224, first_order=True)
def resnet10(conv: ConvKind, num_classes: int, image_size: int, in_channels: int) -> Backbone:
    """ResNet10: one basic block per stage."""
    return _resnet((1, 1, 1, 1), conv, num_classes, image_size, in_channels)


@register_backbone("resnet18", depth=18, image_size=224, first_order=True)
def resnet18(conv: ConvKind, num_classes: int, image_size: int, in_channels: int) -> Backbone:
    """ResNet18: two basic blocks per stage."""
    return _resnet((2, 2, 2, 2), conv, num_classes, image_size, in_channels)


@register_backbone("resnet34", depth=34, image_size=224, first_order=True)
def resnet34(conv: ConvKind, num_classes: int, image_size: int, in_channels: int) -> Backbone:
    """ResNet34: 3, 4, 6, 3 basic blocks per stage."""
    return _resnet((3, 4, 6, 3), conv, num_classes, image_size, in_channels)
