"""Batch norm with a faster double backward, for the inner loop of second-order MAML.

Second-order MAML differentiates each inner step's gradient, so PyTorch runs batch norm's
double backward (``batchnorm_double_backward``) once per inner step and layer. That formula
is written as some thirty full-size tensor operations (in ``torch.profiler``, about a fifth
of a second-order Conv4 training step on the CPU). Every quantity it returns is, per
channel, a linear combination of the incoming gradients, the normalised input and a
constant, with coefficients from five per-channel sums; computed that way it takes about a
dozen passes over the activations and is equal up to float rounding. What it gains is
measured by ``scripts/bench_maml.py`` (row "project, PyTorch BN").

Forward and first backward stay PyTorch's own kernels, so the model's outputs and inner-loop
gradients are unchanged bit for bit; only the second-order terms of the meta-gradient differ,
in rounding. :func:`fused_double_backward` applies it to the calls of
``torch.nn.functional.batch_norm`` within its block that normalise with batch statistics,
have a weight and a bias of the input's dtype, keep no running statistics (as every backbone
here does, outside autocast) and run on the CPU; any other call runs unchanged. (On a GPU,
PyTorch's cuDNN batch norm is kept: the formula was timed on the CPU only.) It is one of the
CPU fast paths of :mod:`metaacdc.runtime.fast_paths`: within ``cpu_fast_paths(False)``
every call runs unchanged, and a task learner does not even enter the block
(:meth:`metaacdc.maml.learner.TaskLearner.support_logits`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx
from torch.overrides import TorchFunctionMode

from metaacdc.runtime.fast_paths import cpu_fast_paths_enabled


def _per_channel(values: Tensor) -> Tensor:
    """``(C,)`` -> ``(1, C, 1, 1)``, to broadcast over ``(N, C, H, W)``."""
    return values.view(1, -1, 1, 1)


def _channel_sum(x: Tensor) -> Tensor:
    return x.sum((0, 2, 3))


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    # a product then a sum: several times faster on the CPU than einsum or bmm here
    return _channel_sum(a * b)


class _BatchNormBackward(torch.autograd.Function):
    """PyTorch's batch-norm backward as a function of (grad_out, input, weight), with a
    hand-derived backward (the double backward of batch norm)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        grad_out: Tensor,
        x: Tensor,
        weight: Tensor,
        mean: Tensor,
        invstd: Tensor,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        grads = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(grad_out, x, weight, mean, invstd)
        return grads

    @staticmethod
    def backward(
        ctx: Any, gg_input: Tensor | None, gg_weight: Tensor | None, gg_bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, None, None, None]:
        """With s = invstd, x̂ = (x - mean) s, m elements per channel and the first backward
        dx = w s (g - Σg/m - x̂ Σ(g x̂)/m), dw = Σ g x̂, db = Σ g, this returns the gradients
        of <gg_input, dx> + <gg_weight, dw> + <gg_bias, db> with respect to g, x and w.

        Not differentiable itself: a graph asked of it (``create_graph=True``) is refused
        rather than silently missing the third-order terms.
        """
        if torch.is_grad_enabled():
            raise RuntimeError(
                "batch norm under metaacdc.maml.batch_norm.fused_double_backward is "
                "differentiable twice only; run third-order derivatives outside it"
            )
        grad_out, x, weight, mean, invstd = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        x_hat = (x - _per_channel(mean)).mul_(_per_channel(invstd))
        gg_input = torch.zeros_like(x) if gg_input is None else gg_input
        gg_weight = torch.zeros_like(weight) if gg_weight is None else gg_weight
        gg_bias = torch.zeros_like(weight) if gg_bias is None else gg_bias

        sum_g = _channel_sum(grad_out)
        mean_g_xhat = _channel_dot(grad_out, x_hat) / count
        sum_gg = _channel_sum(gg_input)
        sum_gg_xhat = _channel_dot(gg_input, x_hat)
        # <gg_input, dx> / (w s): the part of the loss every term below differentiates
        projected = _channel_dot(gg_input, grad_out) - sum_g * sum_gg / count
        projected = projected - mean_g_xhat * sum_gg_xhat
        scale = weight * invstd

        d_weight = invstd * projected
        # d_x = c_g g + c_gg gg_input + c_xhat x̂ + c_const
        c_g = invstd * gg_weight - scale * invstd * sum_gg_xhat / count
        c_gg = -scale * invstd * mean_g_xhat
        c_xhat = -scale * invstd * projected / count - c_g * mean_g_xhat
        c_xhat = c_xhat - c_gg * sum_gg_xhat / count
        c_const = -(c_g * sum_g + c_gg * sum_gg) / count
        d_x = grad_out * _per_channel(c_g)
        d_x.add_(gg_input * _per_channel(c_gg)).add_(x_hat * _per_channel(c_xhat))
        d_x.add_(_per_channel(c_const))
        # d_grad_out = w s (gg - Σgg/m - x̂ Σ(gg x̂)/m) + gg_weight x̂ + gg_bias
        d_grad_out = gg_input * _per_channel(scale)
        d_grad_out.add_(x_hat * _per_channel(gg_weight - scale * sum_gg_xhat / count))
        d_grad_out.add_(_per_channel(gg_bias - scale * sum_gg / count))
        return d_grad_out, d_x, d_weight, None, None, None


class _BatchNorm(torch.autograd.Function):
    """Training-mode batch norm without running statistics: PyTorch's forward and backward
    kernels, whose backward is differentiable through :class:`_BatchNormBackward`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        x, weight, mean, invstd = ctx.saved_tensors
        d_x, d_weight, d_bias = _BatchNormBackward.apply(grad_out, x, weight, mean, invstd, ctx.eps)
        return d_x, d_weight, d_bias, None


def _batch_norm_arguments(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor | None, Tensor | None, bool, float]:
    """``torch.nn.functional.batch_norm``'s arguments, named (its signature)."""
    uses_running_stats = running_mean is not None or running_var is not None
    return input, weight, bias, training and not uses_running_stats, eps


class _FusedDoubleBackwardMode(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            x, weight, bias, batch_stats_only, eps = _batch_norm_arguments(*args, **kwargs)
            if (
                batch_stats_only
                and x.dim() == 4
                and weight is not None
                and bias is not None
                and x.dtype == weight.dtype == bias.dtype  # not under autocast
                and x.device.type == "cpu"
                and cpu_fast_paths_enabled()
            ):
                return _BatchNorm.apply(x, weight, bias, eps)
        return func(*args, **kwargs)


@contextmanager
def fused_double_backward() -> Iterator[None]:
    """Within the block, batch norm (with batch statistics, weight and bias, no running
    statistics) differentiates twice through the faster formula of this module."""
    with _FusedDoubleBackwardMode():
        yield
