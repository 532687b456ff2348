"""Backbones of the depth study (Conv4, Conv6, ResNet10/18/34) in a registry."""

from metaacdc.backbones import convnet as _convnet  # noqa: F401  (registers conv4, conv6)
from metaacdc.backbones import resnet as _resnet  # noqa: F401  (registers resnet10/18/34)
from metaacdc.backbones.base import Backbone
from metaacdc.backbones.registry import (
    BackboneMeta,
    backbone_meta,
    create_backbone,
    list_backbones,
    register_backbone,
)
from metaacdc.convs.norm import batch_norm

#: The backbones of the papers' depth study, shallow to deep: the default grid of `curve`
#: and of the model table. Any registered backbone may join a grid, at its registered depth.
DEPTH_STUDY: tuple[str, ...] = ("conv4", "conv6", "resnet10", "resnet18", "resnet34")

__all__ = [
    "DEPTH_STUDY",
    "Backbone",
    "BackboneMeta",
    "backbone_meta",
    "batch_norm",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
