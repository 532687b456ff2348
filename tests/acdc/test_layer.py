"""ACDCConv2d against F.conv2d with an explicitly reconstructed kernel, atom-drop, init, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metaacdc.acdc import ACDCConv2d, GroupLayout
from tests.reference import reference_dense_kernel

# (in, out, kernel, stride, padding, dilation, groups, group_size)
#: small operators only lose to thread hand-offs (see one_thread in tests/conftest.py);
#: every comparison here is between computations of this process
pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [
    (16, 16, 3, 1, 1, 1, 1, None),
    (16, 32, 3, 2, 1, 1, 1, None),
    (3, 8, 7, 2, 3, 1, 1, None),
    (8, 24, (3, 5), 1, (1, 2), 1, 4, None),
    (12, 12, 3, 1, 2, 2, 1, None),
    (16, 16, 3, 1, 1, 1, 1, 4),
    (16, 32, 3, 2, 1, 1, 1, 4),
    (32, 16, 3, 1, 1, 1, 1, 8),
    (12, 12, 1, 1, 0, 1, 1, 4),
]


def make_layer(case: tuple, **kw: object) -> ACDCConv2d:
    c_in, c_out, k, stride, padding, dilation, groups, s = case
    return ACDCConv2d(
        c_in, c_out, k, stride, padding, dilation, groups, bias=True, atoms=5, group_size=s, **kw
    )


@pytest.mark.parametrize("path", ["kernel", "atoms"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_backward_equal_conv_with_reconstructed_kernel(case: tuple, path: str) -> None:
    layer = make_layer(case, path=path).eval()
    with torch.no_grad():
        layer.bias.normal_()  # type: ignore[union-attr]
    x = torch.randn(2, case[0], 11, 10, requires_grad=True)
    out = layer(x)
    kernel = reference_dense_kernel(layer)
    expected = F.conv2d(x, kernel, layer.bias, layer.stride, layer.padding, layer.dilation)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    upstream = torch.randn_like(out)
    params = [x, layer.coefficients, layer.atoms, layer.bias]
    got = torch.autograd.grad(out, params, upstream)
    want = torch.autograd.grad(expected, params, upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_nn_conv2d_semantics(mode: str) -> None:
    layer = ACDCConv2d(4, 6, 3, padding=1, padding_mode=mode, atoms=3, bias=False).eval()
    x = torch.randn(1, 4, 8, 8)
    expected = F.conv2d(F.pad(x, [1, 1, 1, 1], mode=mode), reference_dense_kernel(layer))
    for path in ("kernel", "atoms"):
        layer.path = path  # type: ignore[assignment]
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_same_padding_string() -> None:
    layer = ACDCConv2d(4, 4, 3, padding="same", dilation=2, atoms=3).eval()
    x = torch.randn(1, 4, 9, 9)
    assert layer(x).shape == (1, 4, 9, 9)
    expected = F.conv2d(x, reference_dense_kernel(layer), layer.bias, padding="same", dilation=2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_dense_kernel_matches_reference() -> None:
    for case in CASES:
        layer = make_layer(case)
        torch.testing.assert_close(layer.dense_kernel(), reference_dense_kernel(layer).detach())


def test_auto_path_prefers_atoms_for_small_maps_and_large_kernels() -> None:
    deep = ACDCConv2d(512, 512, 3, padding=1, atoms=8)
    assert deep._atom_path_is_cheaper(torch.empty(20, 512, 3, 3))
    assert not deep._atom_path_is_cheaper(torch.empty(20, 512, 21, 21))
    shallow = ACDCConv2d(64, 64, 3, padding=1, atoms=8)
    assert not shallow._atom_path_is_cheaper(torch.empty(20, 64, 21, 21))
    grouped = ACDCConv2d(64, 64, 3, padding=1, atoms=8, group_size=16)
    assert not grouped._atom_path_is_cheaper(torch.empty(20, 64, 21, 21))


class TestAtomDrop:
    def test_eval_mode_is_exact_identity(self) -> None:
        layer = ACDCConv2d(8, 8, 3, padding=1, atoms=6, atom_drop=0.5).eval()
        x = torch.randn(2, 8, 6, 6)
        first, second = layer(x), layer(x)
        assert torch.equal(first, second)
        assert torch.equal(layer._effective_atoms(), layer.atoms)

    def test_train_mode_kernel_is_unbiased_and_drops_fraction_p(self) -> None:
        p, draws = 0.3, 4000
        layer = ACDCConv2d(4, 4, 3, atoms=8, atom_drop=p).train()
        torch.manual_seed(123)
        total = torch.zeros_like(layer.weight_for_conv())
        dropped = 0
        with torch.no_grad():
            for _ in range(draws):
                atoms = layer._effective_atoms()
                dropped += int((atoms.flatten(1).abs().sum(1) == 0).sum())
                total += layer.weight_for_conv(atoms)
        mean_kernel = total / draws
        undropped = layer.weight_for_conv()
        # per-entry standard error of the mean is about |K| * sqrt(p / (1-p) / draws)
        tolerance = 4 * math.sqrt(p / (1 - p) / draws) * undropped.abs().max()
        assert (mean_kernel - undropped).abs().max() < tolerance
        fraction = dropped / (draws * layer.num_atoms)
        assert abs(fraction - p) < 4 * math.sqrt(p * (1 - p) / (draws * layer.num_atoms))

    def test_train_mode_changes_between_forwards(self) -> None:
        layer = ACDCConv2d(8, 8, 3, padding=1, atoms=8, atom_drop=0.5).train()
        x = torch.randn(1, 8, 5, 5)
        assert not torch.equal(layer(x), layer(x))


def test_init_reconstructed_kernel_has_plain_kaiming_variance() -> None:
    layer = ACDCConv2d(256, 256, 3, atoms=8)
    kernel = layer.dense_kernel()
    target = 2.0 / (9 * 256)
    assert kernel.var().item() == pytest.approx(target, rel=0.05)
    flat = layer.atoms.detach().reshape(8, 9)
    gram = flat @ flat.T
    # orthogonal rows, all of one norm
    torch.testing.assert_close(gram, gram[0, 0] * torch.eye(8), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"atoms": 0}, "atoms"),
        ({"atom_drop": 1.0}, "atom_drop"),
        ({"path": "fast"}, "path"),
        ({"padding_mode": "mirror"}, "padding_mode"),
        ({"group_size": 5}, "group_size"),
        ({"group_size": 4, "groups": 2}, "group_size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ACDCConv2d(16, 16, 3, **kwargs)


def test_group_layout_names_accepted_group_sizes() -> None:
    with pytest.raises(ValueError, match=r"group_size=5 .* accepted values here: 1, 2, 4, 8, 16"):
        GroupLayout(16, 32, 5)
    with pytest.raises(ValueError, match="multiples of one another"):
        GroupLayout(64, 96, 32)
