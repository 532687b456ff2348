"""Batch norm followed by max-pooling, computed pool first where nothing is differentiated.

Per channel, batch norm with a weight ``w >= 0`` is the increasing map ``y -> y * a + b``
(``a = w / sqrt(var + eps)``, ``b = bias - mean * a``), and max-pooling commutes with every
increasing map. So conv -> BN -> max-pool may pool the raw convolution output and apply the
map to the pooled quarter of the values; the statistics are still those of the whole
output, so the result equals the textbook order up to float rounding (the map is rounded
here as a product and a sum, inside PyTorch's batch-norm kernel otherwise). What it saves is
writing and re-reading the full-size normalised tensor: in the evaluator's query pass (75
images at 84 px) the first Conv block's output is the largest tensor of a task. What that
gains is measured by ``scripts/bench_maml.py`` (its evaluation rows; the reference loop runs
the textbook order).

It is one of the CPU fast paths of :mod:`metaacdc.runtime.fast_paths` (off within
``cpu_fast_paths(False)``), and applies only where no gradient is recorded (the query pass
of the evaluator and of the adaptation API), on the CPU (where it was timed), to batch norm
without running statistics (every backbone here) and with a weight ``>= 0`` everywhere: a
negative weight makes the map decreasing, and the textbook order runs then.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaacdc.runtime.fast_paths import cpu_fast_paths_enabled


def pool_first_applies(norm: nn.BatchNorm2d, x: Tensor) -> bool:
    """Whether :func:`pooled_batch_norm` may replace ``pool(norm(x))`` for this call."""
    weight, bias = norm.weight, norm.bias
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and cpu_fast_paths_enabled()
        and norm.running_mean is None
        and weight is not None
        and bias is not None
        and weight.dtype == x.dtype
        and not bool((weight < 0).any())
    )


def pooled_batch_norm(x: Tensor, norm: nn.BatchNorm2d, pool: nn.MaxPool2d) -> Tensor:
    """``pool(norm(x))`` for a call where :func:`pool_first_applies`, pooling first."""
    mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
    scale = (var + norm.eps).rsqrt_().mul_(norm.weight)
    shift = norm.bias - mean * scale
    per_channel = (1, -1, 1, 1)
    return pool(x).mul_(scale.view(per_channel)).add_(shift.view(per_channel))
