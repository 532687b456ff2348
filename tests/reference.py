"""Independent reference maths for ACDC layers, written from the paper, not from the code."""

from __future__ import annotations

import torch
from torch import Tensor

from metaacdc.acdc import ACDCConv2d


def reference_dense_kernel(layer: ACDCConv2d, atoms: Tensor | None = None) -> Tensor:
    """``(c_out, c_in, kh, kw)`` kernel of a groups=1 conv equal to ``layer`` (eval mode),
    differentiable in the layer's coefficients and atoms."""
    A, D = layer.coefficients, layer.atoms if atoms is None else atoms
    c_in, c_out = layer.in_channels, layer.out_channels
    kh, kw = layer.kernel_size
    dense = A.new_zeros(c_out, c_in, kh, kw)
    if layer.layout is None:
        per_in, per_out = c_in // layer.groups, c_out // layer.groups
        kernel = torch.einsum("oim,mhw->oihw", A[:c_out, :per_in], D)
        for g in range(layer.groups):
            rows = slice(g * per_out, (g + 1) * per_out)
            dense[rows, g * per_in : (g + 1) * per_in] = kernel[rows]
        return dense
    s = layer.layout.group_size
    g_in, g_out = c_in // s, c_out // s
    groups = min(g_in, g_out)
    unit = 0
    pre_shuffle = A.new_zeros(c_out, c_in, kh, kw)
    # widening: input block j feeds output blocks j*r .. j*r+r-1; narrowing: output block j
    # sums input blocks j*r .. j*r+r-1; unit order follows (j, b).
    for j in range(groups):
        for b in range(max(g_in, g_out) // groups):
            if g_out >= g_in:
                in_block, out_block = j, j * (g_out // groups) + b
            else:
                in_block, out_block = j * (g_in // groups) + b, j
            kernel = torch.einsum("oim,mhw->oihw", A, D[unit])
            pre_shuffle[out_block * s : (out_block + 1) * s, in_block * s : (in_block + 1) * s] = (
                kernel
            )
            unit += 1
    # ShuffleNet channel shuffle with `groups` groups: position p takes pre-shuffle channel q.
    per_group = c_out // groups
    for q in range(c_out):
        p = (q % per_group) * groups + q // per_group
        dense[p] = pre_shuffle[q]
    return dense
