"""Backbones of the depth study (Conv4, Conv6, ResNet10/18/34) in a registry."""

from metaacdc.backbones import convnet as _convnet  # noqa: F401  (registers conv4, conv6)
from metaacdc.backbones import resnet as _resnet  # noqa: F401  (registers resnet10/18/34)
from metaacdc.backbones.base import Backbone
from metaacdc.backbones.registry import create_backbone, list_backbones, register_backbone
from metaacdc.convs.norm import batch_norm

__all__ = ["Backbone", "batch_norm", "create_backbone", "list_backbones", "register_backbone"]
