"""Batch norm's fused double backward equals PyTorch's, and applies only where it should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metaacdc.backbones import create_backbone
from metaacdc.maml.batch_norm import fused_double_backward
from metaacdc.maml.learner import MetaLearner
from metaacdc.runtime.fast_paths import cpu_fast_paths

#: small operators only lose to thread hand-offs (see one_thread in tests/conftest.py);
#: every comparison here is between computations of this process
pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 1e-5


def inputs(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Input far from zero mean (as a conv output can be), weight of both signs, bias, and
    a gradient of the output that depends on them (as in an inner loop)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 6, generator=generator, dtype=torch.float64) * 2 + 3
    weight = torch.tensor([1.5, -0.7, 0.2], dtype=torch.float64)
    bias = torch.tensor([0.1, 0.0, -2.0], dtype=torch.float64)
    grad_out = torch.randn(4, 3, 5, 6, generator=generator, dtype=torch.float64)
    x, weight, bias, grad_out = (t.to(dtype).requires_grad_() for t in (x, weight, bias, grad_out))
    return x, weight, bias, grad_out


def second_order(
    fused: bool, used: tuple[bool, bool, bool], dtype: torch.dtype = torch.float64
) -> tuple[Tensor, ...]:
    """Gradients, with respect to input, weight and output gradient, of a random linear
    function of those first-order gradients of batch norm marked in ``used``
    (input, weight, bias)."""
    x, weight, bias, grad_out = inputs(dtype)
    generator = torch.Generator().manual_seed(1)
    with fused_double_backward() if fused else torch.enable_grad():
        out = F.batch_norm(x, None, None, weight, bias, training=True, eps=EPS)
    firsts = torch.autograd.grad(out, (x, weight, bias), grad_out, create_graph=True)
    total = sum(
        (first * torch.randn(first.shape, generator=generator, dtype=torch.float64).to(dtype)).sum()
        for first, use in zip(firsts, used)
        if use
    )
    assert isinstance(total, Tensor)
    return torch.autograd.grad(total, (x, weight, grad_out), allow_unused=True)


@pytest.mark.parametrize(
    "used", [(True, True, True), (True, False, False), (False, True, True), (False, False, True)]
)
def test_double_backward_equals_pytorch(used: tuple[bool, bool, bool]) -> None:
    for fused, native in zip(second_order(True, used), second_order(False, used)):
        if native is None:  # the bias gradient alone does not depend on x or the weight
            assert fused is None or torch.count_nonzero(fused) == 0
        else:
            torch.testing.assert_close(fused, native, rtol=1e-10, atol=1e-12)


def test_double_backward_float32_within_rounding() -> None:
    used = (True, True, True)
    for fused, native in zip(second_order(True, used, torch.float32), second_order(False, used)):
        torch.testing.assert_close(fused.double(), native, rtol=1e-4, atol=1e-5)


def test_forward_and_first_backward_are_pytorch_bit_for_bit() -> None:
    x, weight, bias, grad_out = inputs(torch.float32)
    results = []
    for fused in (True, False):
        with fused_double_backward() if fused else torch.enable_grad():
            out = F.batch_norm(x, None, None, weight, bias, training=True, eps=EPS)
        results.append((out, *torch.autograd.grad(out, (x, weight, bias), grad_out)))
    for fused, native in zip(*results):
        assert torch.equal(fused, native)


def test_calls_it_cannot_serve_run_unchanged() -> None:
    """Running statistics, no affine parameters, autocast and the CPU fast paths off keep
    PyTorch's batch norm."""
    x, weight, bias, _ = inputs(torch.float32)
    running = (torch.zeros(3), torch.ones(3))
    with fused_double_backward(), cpu_fast_paths(False):
        switched_off = F.batch_norm(x, None, None, weight, bias, training=True)
    with fused_double_backward():
        plain = F.batch_norm(x, None, None, weight, bias, training=True)
        tracked = F.batch_norm(x, *running, weight, bias, training=True)
        unscaled = F.batch_norm(x, None, None, training=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = F.batch_norm(x.bfloat16(), None, None, weight, bias, training=True)
    assert plain.grad_fn is not None and type(plain.grad_fn).__name__ == "_BatchNormBackward"
    for out in (tracked, unscaled, mixed, switched_off):
        assert out.grad_fn is not None and "NativeBatchNorm" in type(out.grad_fn).__name__
    assert not torch.equal(running[0], torch.zeros(3))  # the running mean was updated


def test_graph_of_the_double_backward_is_refused() -> None:
    """A third derivative would silently miss terms; asking for it fails instead."""
    x, weight, bias, _ = inputs()
    with fused_double_backward():
        out = F.batch_norm(x, None, None, weight, bias, training=True)
    first = torch.autograd.grad(out.square().sum(), x, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="differentiable twice only"):
        torch.autograd.grad(first.square().sum(), x, create_graph=True)


def batch_norm_nodes(logits: Tensor) -> set[str]:
    """Names of the batch-norm nodes in the graph of ``logits``."""
    names, stack, seen = set(), [logits.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "BatchNorm" in type(node).__name__:
            names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize(
    ("first_order", "fused", "expected"),
    [
        (False, True, "_BatchNormBackward"),
        (False, False, "NativeBatchNormBackward0"),
        (True, True, "NativeBatchNormBackward0"),
    ],
)
def test_only_second_order_inner_loops_use_it(
    first_order: bool, fused: bool, expected: str
) -> None:
    torch.manual_seed(0)
    model = create_backbone("conv4", num_classes=3, image_size=16)
    learner = MetaLearner(model, 0.1, first_order).task_learner()
    images = torch.randn(6, 3, 16, 16)
    with cpu_fast_paths(fused):
        assert batch_norm_nodes(learner.support_logits(images)) == {expected}
    assert batch_norm_nodes(learner(images)) == {"NativeBatchNormBackward0"}  # query pass
