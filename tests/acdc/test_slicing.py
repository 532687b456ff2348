"""NestedSlices: the chain, reuse within a pass, invalidation, and unchanged gradients."""

from __future__ import annotations

import copy
import pickle

import torch

from metaacdc.acdc import ACDCConv2d
from metaacdc.acdc.slicing import NestedSlices
from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind


def test_each_slice_is_cut_from_the_smallest_containing_one() -> None:
    chain = NestedSlices([(64, 3), (64, 64), (128, 64), (128, 128), (512, 512)], (512, 512))
    assert chain.parent == {
        (64, 3): (64, 64),
        (64, 64): (128, 64),
        (128, 64): (128, 128),
        (128, 128): (512, 512),
    }


def test_slices_are_reused_until_the_tensor_changes() -> None:
    A = torch.randn(8, 8, 2, requires_grad=True)
    chain = NestedSlices([(2, 2), (4, 4)], (8, 8))
    first = chain.get(A, 2, 2)
    assert chain.get(A, 2, 2) is first
    torch.testing.assert_close(first, A[:2, :2])
    with torch.no_grad():
        A.add_(1.0)  # an optimizer step bumps the version
    assert chain.get(A, 2, 2) is not first
    other = torch.randn(8, 8, 2, requires_grad=True)
    torch.testing.assert_close(chain.get(other, 4, 4), other[:4, :4])
    with torch.no_grad():
        assert chain.get(other, 4, 4).grad_fn is None


def test_copies_carry_no_cached_tensors() -> None:
    A = torch.randn(8, 8, 2, requires_grad=True)
    chain = NestedSlices([(2, 2)], (8, 8))
    chain.get(A, 2, 2)
    for clone in (copy.deepcopy(chain), pickle.loads(pickle.dumps(chain))):
        assert clone._slices == {} and clone._source is None
        assert clone.parent == chain.parent


def test_gradients_equal_plain_slicing() -> None:
    model = create_backbone("resnet10", conv_kind("acdc-net", atom_drop=0.0), image_size=32)
    x = torch.randn(4, 3, 32, 32)
    model(x).square().sum().backward()
    with_chain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for layer in model.modules():
        if isinstance(layer, ACDCConv2d):
            layer.slices = None
    model(x).square().sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, with_chain[name], rtol=1e-5, atol=1e-6)
