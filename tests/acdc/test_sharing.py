"""Coefficient sharing: storage, MAML (learn2learn and higher), convert() on foreign models."""

from __future__ import annotations

import higher
import learn2learn as l2l
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from metaacdc.acdc import ACDCConv2d, convert
from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind

#: small operators only lose to thread hand-offs (see one_thread in tests/conftest.py);
#: every comparison here is between computations of this process
pytestmark = pytest.mark.usefixtures("one_thread")


def acdc_layers(model: nn.Module) -> list[ACDCConv2d]:
    return [m for m in model.modules() if isinstance(m, ACDCConv2d)]


def distinct_coefficients(model: nn.Module) -> list[torch.Tensor]:
    unique: dict[int, torch.Tensor] = {}
    for layer in acdc_layers(model):
        unique.setdefault(id(layer.coefficients), layer.coefficients)
    return list(unique.values())


def small_task(ways: int = 3, size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(ways * 2, 3, size, size)
    return x, torch.arange(ways).repeat(2)


def test_net_scope_shares_one_storage_across_every_layer() -> None:
    model = create_backbone("resnet18", "acdc-net", image_size=32)
    layers = acdc_layers(model)
    assert len(layers) == 17
    (shared,) = distinct_coefficients(model)
    assert shared.shape == (512, 512, 8)
    assert {layer.coefficients.data_ptr() for layer in layers} == {shared.data_ptr()}
    names = [n for n, p in model.named_parameters() if p is shared]
    assert len(names) == 1, "named_parameters must list the shared tensor once"


def per_layer_gradient_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d loss / d A computed by giving every layer its own copy of A, then summing."""
    layers = acdc_layers(model)
    shared = layers[0].coefficients
    copies = [shared.detach().clone().requires_grad_(True) for _ in layers]
    for layer, copy in zip(layers, copies):
        layer._parameters["coefficients"] = copy  # untie, same values
    try:
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, copies)
    finally:
        for layer in layers:
            layer._parameters["coefficients"] = shared
    return torch.stack(grads).sum(0)


@pytest.mark.parametrize("first_order", [False, True])
def test_learn2learn_clone_and_adapt_keep_one_shared_coefficient(first_order: bool) -> None:
    model = create_backbone(
        "conv4", conv_kind("acdc-net", atom_drop=0.0), num_classes=3, image_size=20
    )
    x, y = small_task()
    lr = 0.1
    expected = model.features[0][0].coefficients.detach() - lr * per_layer_gradient_sum(model, x, y)

    maml = l2l.algorithms.MAML(model, lr=lr, first_order=first_order)
    learner = maml.clone()
    assert len(distinct_coefficients(learner)) == 1
    learner.adapt(F.cross_entropy(learner(x), y))
    (adapted,) = distinct_coefficients(learner)
    torch.testing.assert_close(adapted.detach(), expected, rtol=1e-4, atol=1e-6)
    # the meta-gradient flows back to the one original parameter
    F.cross_entropy(learner(x), y).backward()
    assert model.features[0][0].coefficients.grad is not None


def test_higher_functional_model_matches_learn2learn_adaptation() -> None:
    model = create_backbone(
        "conv4", conv_kind("acdc-net", atom_drop=0.0), num_classes=3, image_size=20
    )
    x, y = small_task()
    lr = 0.1
    learner = l2l.algorithms.MAML(model, lr=lr).clone()
    learner.adapt(F.cross_entropy(learner(x), y))

    fmodel = higher.monkeypatch(model, copy_initial_weights=False)
    params = list(fmodel.parameters())
    assert len(params) == len(list(model.parameters())), "one fast weight per shared tensor"
    grads = torch.autograd.grad(F.cross_entropy(fmodel(x, params=params), y), params)
    adapted = [p - lr * g for p, g in zip(params, grads)]
    torch.testing.assert_close(fmodel(x, params=adapted), learner(x), rtol=1e-4, atol=1e-5)


def torchvision_resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10)


def test_convert_torchvision_resnet18_net_scope() -> None:
    model = convert(torchvision_resnet18(), share="net", atoms=8)
    leftover = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert all(m.kernel_size == (1, 1) for m in leftover) and len(leftover) == 3
    assert len(acdc_layers(model)) == 17
    (shared,) = distinct_coefficients(model)
    assert shared.shape == (512, 512, 8)
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"


def test_convert_include_1x1_decomposes_projection_shortcuts() -> None:
    model = convert(torchvision_resnet18(), share="layer", include_1x1=True)
    assert not [m for m in model.modules() if type(m) is nn.Conv2d]


def test_convert_block_scope_follows_stages() -> None:
    model = convert(torchvision_resnet18(), share="block", example_input=torch.zeros(2, 3, 64, 64))
    shapes = sorted(tuple(t.shape) for t in distinct_coefficients(model))
    assert shapes == [(64, 3, 8), (64, 64, 8), (128, 128, 8), (256, 256, 8), (512, 512, 8)]


def cifar_vgg16() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for item in [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ]:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [
                nn.Conv2d(width, int(item), 3, padding=1),
                nn.BatchNorm2d(int(item)),
                nn.ReLU(),
            ]
            width = int(item)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))


def test_vgg16_last_two_512_blocks_are_split_by_pooling() -> None:
    model = convert(cifar_vgg16(), share="block", example_input=torch.zeros(2, 3, 32, 32))
    blocks = distinct_coefficients(model)
    assert [t.shape[0] for t in blocks] == [64, 128, 256, 512, 512]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    biases = [m.bias for m in acdc_layers(model)]
    assert all(b is not None for b in biases), "conv biases are kept"


def test_vgg16_without_example_input_cannot_see_pooling() -> None:
    model = convert(cifar_vgg16(), share="block")
    assert [t.shape[0] for t in distinct_coefficients(model)] == [64, 128, 256, 512]


def test_convert_keeps_bias_values_and_other_modules() -> None:
    source = cifar_vgg16()
    bias = source[0].bias.detach().clone()
    linear = source[-1]
    model = convert(source, share="net")
    assert torch.equal(model[0].bias.detach(), bias)
    assert model[-1] is linear


def test_grouped_net_scope_shares_s_by_s_and_keeps_stem_alone() -> None:
    model = convert(torchvision_resnet18(), share="g-net", group_size=32, atoms=4)
    tensors = distinct_coefficients(model)
    assert sorted(tuple(t.shape) for t in tensors) == [(32, 32, 4), (64, 3, 4)]
    stem = model.conv1
    assert isinstance(stem, ACDCConv2d) and stem.layout is None
    assert torch.isfinite(model(torch.randn(2, 3, 64, 64))).all()


def test_group_size_argument_alone_selects_grouped_variant() -> None:
    model = convert(torchvision_resnet18(), share="net", group_size=64)
    assert sorted(tuple(t.shape) for t in distinct_coefficients(model)) == [(64, 3, 8), (64, 64, 8)]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"share": "global"}, "share='global' is not valid; accepted values: layer, block, net"),
        ({"share": "g-net"}, "needs group_size"),
        ({"atoms": 0}, "atoms=0"),
        ({"atom_drop": -0.1}, "atom_drop"),
        ({"share": "g-net", "group_size": 48}, "group_size=48"),
    ],
)
def test_convert_rejects_bad_arguments(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        convert(torchvision_resnet18(), **kwargs)
