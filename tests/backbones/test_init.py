"""Initialisation schemes: ``pytorch`` draws every kernel at ``nn.Conv2d``'s default scale,
``Var(K) = 1 / (3 * fan_in)`` (fan-in per group), whatever the conv kind; ``closerlook`` is
what the kinds build (Kaiming fan-out); shared tensors stay shared."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metaacdc.acdc.layer import ACDCConv2d
from metaacdc.backbones import create_backbone
from metaacdc.backbones.init import initialise
from metaacdc.convs import conv_kind
from metaacdc.convs.kernel_sharing import SharedKernelConv2d
from metaacdc.errors import ConfigError

KINDS = {"plain": {}, "acdc-net": {}, "acdc-g-net": {"group_size": 16}, "ks-net": {}}


def resnet10(conv: str, init: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_backbone("resnet10", conv_kind(conv, **KINDS[conv]), image_size=32)
    return initialise(model, init)


def kernels(model: nn.Module) -> list[tuple[torch.Tensor, int, int]]:
    """(kernel, fan-in of one output, fan-out) of every convolution; a grouped ACDC layer's
    kernel is its block-diagonal dense kernel, whose fan-in is one group's inputs."""
    found = []
    for module in model.modules():
        if isinstance(module, ACDCConv2d):
            kernel = module.dense_kernel().detach()
            kh, kw = module.kernel_size
            found.append((kernel, module.unit_shape[1] * kh * kw, module.out_channels * kh * kw))
        elif isinstance(module, nn.Conv2d | SharedKernelConv2d):
            out, fan_in, kh, kw = module.weight.shape
            found.append((module.weight.detach(), fan_in * kh * kw, out * kh * kw))
    return found


def nonzero_variance(kernel: torch.Tensor) -> float:
    """Variance of the entries a grouped layout does not hold at zero."""
    return float(kernel[kernel != 0].pow(2).mean())


@pytest.mark.parametrize("conv", KINDS)
def test_pytorch_scale_is_one_third_over_fan_in_for_every_kind(conv: str) -> None:
    for kernel, fan_in, _ in kernels(resnet10(conv, "pytorch")):
        if kernel.numel() >= 4096:  # enough entries for a 10 % check
            assert nonzero_variance(kernel) == pytest.approx(1 / (3 * fan_in), rel=0.1)


@pytest.mark.parametrize("conv", ["plain", "ks-net"])
def test_pytorch_scale_is_uniform_within_one_over_root_fan_in(conv: str) -> None:
    """nn.Conv2d's default draws ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: bounded, not normal."""
    for kernel, fan_in, _ in kernels(resnet10(conv, "pytorch")):
        bound = 1 / math.sqrt(fan_in)
        assert kernel.abs().max() <= bound
        if kernel.numel() >= 4096:
            assert kernel.abs().max() > 0.95 * bound


@pytest.mark.parametrize("conv", ["plain", "acdc-net", "ks-net"])
def test_closerlook_is_kaiming_fan_out_and_leaves_the_model_as_built(conv: str) -> None:
    model = resnet10(conv, "closerlook")
    torch.manual_seed(0)
    built = create_backbone("resnet10", conv_kind(conv), image_size=32)
    for (name, got), want in zip(model.state_dict().items(), built.state_dict().values()):
        assert torch.equal(got, want), name
    for kernel, _, fan_out in kernels(model):
        if kernel.numel() >= 4096:
            assert nonzero_variance(kernel) == pytest.approx(2 / fan_out, rel=0.1)


@pytest.mark.parametrize("conv", ["acdc-net", "ks-net"])
def test_shared_tensors_stay_shared(conv: str) -> None:
    closerlook, pytorch = resnet10(conv, "closerlook"), resnet10(conv, "pytorch")
    count = sum(p.numel() for p in closerlook.parameters())
    assert sum(p.numel() for p in pytorch.parameters()) == count  # parameters() dedups
    if conv == "ks-net":
        shared = {id(m.weight) for m in pytorch.modules() if isinstance(m, SharedKernelConv2d)}
        assert len(shared) < sum(isinstance(m, SharedKernelConv2d) for m in pytorch.modules())
    else:
        layers = [m for m in pytorch.modules() if isinstance(m, ACDCConv2d)]
        assert len({id(m.coefficients) for m in layers}) == 1


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="init"):
        initialise(nn.Conv2d(1, 1, 3), "xavier")
