"""``convert`` on a model whose convs differ: every replaced conv keeps its settings and
output shape, and with the original kernels copied into the decomposition (``share="layer"``)
the converted model computes what the original did."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaacdc.acdc import ACDCConv2d, convert
from metaacdc.acdc.layer import Path

#: small operators only lose to thread hand-offs (see one_thread in tests/conftest.py);
#: every comparison here is between computations of this process
pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_convs() -> nn.Sequential:
    """Convs differing in stride, padding, dilation, padding mode, bias and kernel size."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, bias=False),  # no padding
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(12, 12, 1, bias=False),  # 1x1: only with include_1x1
        nn.ReLU(),
        nn.Conv2d(12, 16, 3, stride=(2, 1), padding=(1, 2), padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(16, 10, 1, stride=2),
        nn.Flatten(),
    )


SETTINGS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)
INPUT = (2, 3, 15, 17)  # odd, unequal sides: a wrong stride or padding changes the shape


def conv_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of each conv of ``model`` (by module name) in one forward of ``x``."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | ACDCConv2d)
    ]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


@pytest.mark.parametrize("include_1x1", [False, True], ids=["kxk", "with-1x1"])
def test_each_replaced_conv_keeps_its_settings_bias_and_output_shape(include_1x1: bool) -> None:
    original = mixed_convs()
    model = convert(copy.deepcopy(original), share="net", include_1x1=include_1x1)
    x = torch.randn(INPUT)
    want, got = conv_outputs(original, x), conv_outputs(model, x)
    assert got.keys() == want.keys() and len(want) == 6
    for name, conv in original.named_children():
        if not isinstance(conv, nn.Conv2d):
            continue
        new = model.get_submodule(name)
        if conv.kernel_size == (1, 1) and not include_1x1:
            assert type(new) is nn.Conv2d and torch.equal(new.weight, conv.weight), name
        else:
            assert isinstance(new, ACDCConv2d), name
            for setting in SETTINGS:
                assert getattr(new, setting) == getattr(conv, setting), (name, setting)
            if conv.bias is None:
                assert new.bias is None, name
            else:
                assert new.bias is not None and torch.equal(new.bias, conv.bias), name
        assert got[name].shape == want[name].shape, name
    assert model(x).shape == original(x).shape


def copy_kernel(layer: ACDCConv2d, weight: torch.Tensor) -> None:
    """Atoms the standard basis of the kh x kw kernel positions (unused atoms zero), and
    coefficients the kernel's values: the reconstructed kernel is then ``weight``."""
    kh, kw = layer.kernel_size
    taps = kh * kw
    assert layer.num_atoms >= taps and layer.coefficients.shape[:2] == weight.shape[:2]
    with torch.no_grad():
        layer.atoms.zero_()
        layer.atoms[:taps].copy_(torch.eye(taps).view(taps, kh, kw))
        layer.coefficients.zero_()
        layer.coefficients[:, :, :taps].copy_(weight.flatten(2))


@pytest.mark.parametrize("path", ["kernel", "atoms"])
def test_layer_scope_with_copied_kernels_computes_the_original_model(path: Path) -> None:
    original = mixed_convs().eval()
    model = convert(
        copy.deepcopy(original), share="layer", atoms=9, include_1x1=True, path=path
    ).eval()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, ACDCConv2d)}
    assert len(layers) == 6
    assert len({id(layer.coefficients) for layer in layers.values()}) == 6, "one A per layer"
    for name, layer in layers.items():
        conv = original.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        copy_kernel(layer, conv.weight)
        torch.testing.assert_close(layer.dense_kernel(), conv.weight, rtol=0, atol=1e-7)
    x = torch.randn(INPUT)
    want, got = conv_outputs(original, x), conv_outputs(model, x)
    for name in layers:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)


def test_layer_scope_matches_f_conv2d_of_its_own_kernel_with_the_original_settings() -> None:
    """Without copying: each converted layer is ``F.conv2d`` of its reconstructed kernel with
    the original conv's bias, stride, padding and dilation (padding mode applied first)."""
    original = mixed_convs().eval()
    model = convert(copy.deepcopy(original), share="layer", include_1x1=True).eval()
    x = torch.randn(INPUT)
    inputs: dict[str, torch.Tensor] = {}
    for name, module in original.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_pre_hook(
                lambda _m, args, name=name: inputs.__setitem__(name, args[0])
            )
    original(x)  # each conv's input in the original model, to feed both layers
    for name, conv in original.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        layer = model.get_submodule(name)
        assert isinstance(layer, ACDCConv2d)
        features, padding = inputs[name], conv.padding
        if conv.padding_mode != "zeros":
            rows, columns = (int(p) for p in conv.padding)  # ints here, not "same"
            features = F.pad(features, [columns, columns, rows, rows], conv.padding_mode)
            padding = (0, 0)
        expected = F.conv2d(
            features, layer.dense_kernel(), conv.bias, conv.stride, padding, conv.dilation
        )
        torch.testing.assert_close(layer(inputs[name]), expected, rtol=1e-5, atol=1e-5)
