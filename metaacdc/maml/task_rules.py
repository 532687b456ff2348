"""Batching rules that keep a meta-batch's tasks beside the channels.

Under ``torch.func.vmap``, a convolution with per-task weights runs as one grouped
convolution whose output holds the tasks beside the channels: ``(N, T, C, H, W)`` in memory.
PyTorch's own rules for batch norm and pooling first move the tasks to the front, a copy of
the activations per layer, and its batch norm rule applies the affine weight and bias as
separate broadcast operations, each with its own backward and double backward: about three
times the operators of one task's batch norm.

Batch norm with batch statistics and pooling both act per channel, so they can run on the
``(N, T * C, H, W)`` view as one ordinary call: each task's channels get the statistics of
that task's own batch, exactly as the task alone would, with one task's operators for the
whole meta-batch and no copy. :func:`tasks_beside_channels` routes those calls (made by
``nn.BatchNorm*``, ``nn.MaxPool2d``, ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d`` and their
functional forms) to such rules within a vmapped function; every other call, and any call
these rules do not cover (running statistics, pooling that returns indices), runs unchanged.

The rules are ``torch.autograd.Function`` s with a ``vmap`` staticmethod: under ``vmap`` the
rule runs on the unbatched tensors with ordinary operators, which autograd records as usual,
so first and second derivatives are those of PyTorch's own kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

#: per-channel poolings, with the position of their ``return_indices`` argument (if any)
_POOLS: dict[Any, int | None] = {
    F.max_pool2d: 6,
    F.adaptive_max_pool2d: 2,
    F.avg_pool2d: None,
    F.adaptive_avg_pool2d: None,
}


def _beside_channels(x: Tensor, bdim: int | None, tasks: int) -> Tensor:
    """``x`` with its task dimension ``bdim`` merged into the channels:
    ``(N, T * C, ...)`` (a view where the tasks already sit beside the channels)."""
    if bdim is None:
        x = x.unsqueeze(1).expand(x.shape[0], tasks, *x.shape[1:])
    else:
        x = x.movedim(bdim, 1)
    return x.reshape(x.shape[0], tasks * x.shape[2], *x.shape[3:])


def _per_task(p: Tensor | None, bdim: int | None, tasks: int) -> Tensor | None:
    """A per-channel parameter ``(C,)`` (or ``(T, C)`` batched) as ``(T * C,)``."""
    if p is None:
        return None
    p = p.expand(tasks, *p.shape) if bdim is None else p.movedim(bdim, 0)
    return p.reshape(-1)


def _tasks_apart(y: Tensor, dim: int, tasks: int) -> Tensor:
    """``y`` with dimension ``dim`` split into ``(tasks, -1)``: the tasks' own dimension.

    Not a view for autograd (``_unsafe_view``, as ``reshape`` gives for a fresh result): a
    model may modify it in place (an in-place ReLU after pooling), which on a view would
    make autograd copy the whole base tensor back and forth. ``y`` is a fresh output that
    nothing else holds (batch norm and pooling save their inputs, not their outputs).
    """
    shape = (*y.shape[:dim], tasks, y.shape[dim] // tasks, *y.shape[dim + 1 :])
    return torch.ops.aten._unsafe_view(y, shape)


class _UnderVmap(torch.autograd.Function):
    """A rule for use under vmap only: there, autograd records the ordinary operators its
    ``vmap`` staticmethod runs, and this function's own backward is never called."""

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # pragma: no cover - never recorded
        raise RuntimeError("the per-task rules of metaacdc.maml.task_rules run under vmap only")


class _TaskBatchNorm(_UnderVmap):
    """Batch norm with batch statistics, per task under vmap."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, int]:
        x_dim, weight_dim, bias_dim, _ = in_dims
        tasks = info.batch_size
        folded = _beside_channels(x, x_dim, tasks)
        y = F.batch_norm(
            folded,
            None,
            None,
            _per_task(weight, weight_dim, tasks),
            _per_task(bias, bias_dim, tasks),
            True,
            0.0,
            eps,
        )
        return _tasks_apart(y, 1, tasks), 1


class _TaskPool(_UnderVmap):
    """A per-channel pooling ``pool(x)`` under vmap, with the tasks beside the channels or,
    where they are in front, beside the images (whichever is a view)."""

    @staticmethod
    def forward(pool: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return pool(x)

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[int | None, ...], pool: Callable[[Tensor], Tensor], x: Tensor
    ) -> tuple[Tensor, int]:
        x_dim = in_dims[1]
        tasks = info.batch_size
        if x_dim == 0:
            return _tasks_apart(pool(x.flatten(0, 1)), 0, tasks), 0
        return _tasks_apart(pool(_beside_channels(x, x_dim, tasks)), 1, tasks), 1


class _Pool:
    """``pool(x, *args, **kwargs)`` as a function of ``x``."""

    def __init__(self, pool: Callable[..., Tensor], args: tuple[Any, ...], kwargs: dict) -> None:
        self.pool, self.args, self.kwargs = pool, args, kwargs

    def __call__(self, x: Tensor) -> Tensor:
        return self.pool(x, *self.args, **self.kwargs)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _autocast_cast(args: tuple[Any, ...], device_type: str) -> tuple[Any, ...]:
    """A convolution's tensor arguments in autocast's lower precision: what autocast does
    to a convolution outside vmap, and skips for vmap's batched convolution."""
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        arg.to(dtype) if isinstance(arg, Tensor) and arg.is_floating_point() else arg
        for arg in args
    )


class _TasksBesideChannels(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            x = args[0]
            running = (
                _argument(args, kwargs, 1, "running_mean"),
                _argument(args, kwargs, 2, "running_var"),
            )
            if running == (None, None) and _argument(args, kwargs, 5, "training") and x.dim() >= 2:
                eps = _argument(args, kwargs, 7, "eps")
                return _TaskBatchNorm.apply(
                    x,
                    _argument(args, kwargs, 3, "weight"),
                    _argument(args, kwargs, 4, "bias"),
                    1e-5 if eps is None else eps,
                )
        elif func is F.relu and _argument(args, kwargs, 1, "inplace"):
            # vmap runs an in-place op on a view of the batched tensor, which autograd then
            # copies back and forth whole; nn.ReLU(inplace=True) uses the result only
            return F.relu(args[0])
        elif func is F.conv2d and torch.is_autocast_enabled(args[0].device.type):
            return func(*_autocast_cast(args, args[0].device.type), **kwargs)
        elif func in _POOLS and args and args[0].dim() == 4:
            index = _POOLS[func]
            if index is None or not _argument(args, kwargs, index, "return_indices"):
                return _TaskPool.apply(_Pool(func, args[1:], kwargs), args[0])
        return func(*args, **kwargs)


@contextmanager
def tasks_beside_channels() -> Iterator[None]:
    """Within the block (inside a function vmapped over tasks), batch norm with batch
    statistics and per-channel pooling run by the rules of this module, and convolutions
    under autocast take autocast's lower precision."""
    with _TasksBesideChannels():
        yield
