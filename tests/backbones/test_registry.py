"""Backbone metadata on the registry: the protocol's image size, MAML order and depth are
read from each backbone's registration, for built-in and user backbones alike."""

from __future__ import annotations

import pytest
import torch

from metaacdc.backbones import (
    DEPTH_STUDY,
    BackboneMeta,
    backbone_meta,
    create_backbone,
    list_backbones,
    register_backbone,
)
from metaacdc.config import TrainConfig, resolve
from metaacdc.errors import ConfigError
from metaacdc.reports.model_table import model_table
from tests.backbones.toy_backbone import NAME

#: design §4-5: CloserLook's input sizes (84 px Conv, 224 px ResNets), ResNets first order
#: small operators only lose to thread hand-offs (see one_thread in tests/conftest.py);
#: every comparison here is between computations of this process
pytestmark = pytest.mark.usefixtures("one_thread")

PROTOCOL = {
    "conv4": BackboneMeta(depth=4, image_size=84, first_order=False),
    "conv6": BackboneMeta(depth=6, image_size=84, first_order=False),
    "resnet10": BackboneMeta(depth=10, image_size=224, first_order=True),
    "resnet18": BackboneMeta(depth=18, image_size=224, first_order=True),
    "resnet34": BackboneMeta(depth=34, image_size=224, first_order=True),
}


@pytest.mark.parametrize("name", DEPTH_STUDY)
def test_built_in_backbones_carry_the_protocol(name: str) -> None:
    assert backbone_meta(name) == PROTOCOL[name]
    resolved = resolve(TrainConfig(backbone=name))
    assert resolved.image_size == PROTOCOL[name].image_size
    assert resolved.first_order is PROTOCOL[name].first_order


def test_depth_study_is_shallow_to_deep() -> None:
    depths = [backbone_meta(name).depth for name in DEPTH_STUDY]
    assert depths == sorted(depths) == [4, 6, 10, 18, 34]


def test_a_user_backbone_gets_its_own_protocol_not_a_guess() -> None:
    assert NAME in list_backbones()
    resolved = resolve(TrainConfig(backbone=NAME))
    assert (resolved.image_size, resolved.first_order) == (40, True)
    assert resolve(TrainConfig(backbone=NAME, dataset="omniglot")).image_size == 28
    assert resolve(TrainConfig(backbone=NAME, first_order=False)).first_order is False
    model = create_backbone(NAME, "acdc-net", image_size=resolved.image_size)
    assert model(torch.zeros(2, 3, 40, 40)).shape == (2, 5)


def test_the_model_table_measures_a_user_backbone_at_its_size() -> None:
    table = model_table([NAME], atoms=[4])
    assert set(table["image_size"]) == {40}
    assert set(model_table(["conv4"], atoms=[4])["image_size"]) == {84}


def test_registration_needs_every_fact_and_checks_them() -> None:
    with pytest.raises(TypeError, match="depth"):
        register_backbone("no-facts")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="depth=0"):
        register_backbone("flat", depth=0, image_size=32, first_order=False)
    with pytest.raises(ConfigError, match="first_order='yes'"):
        register_backbone("odd", depth=3, image_size=32, first_order="yes")  # type: ignore[arg-type]
    assert not {"no-facts", "flat", "odd"} & set(list_backbones())


def test_unknown_backbone_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="backbone='vgg16' is not valid; accepted values: conv4"):
        backbone_meta("vgg16")
    with pytest.raises(ConfigError, match="backbone='vgg16' is not valid"):
        resolve(TrainConfig(backbone="vgg16"))
