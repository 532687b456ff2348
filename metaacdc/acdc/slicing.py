"""Nested slices of one shared coefficient tensor.

In a scope, layer n reads ``A[:r_n, :c_n]``. Slicing ``A`` separately for every layer makes
the backward pass pad every layer's gradient to the full size of ``A`` and sum those
full-size tensors, which costs more than the reconstruction itself on CPU. Here each slice
is cut from the smallest larger slice (``A[:64, :64]`` from ``A[:128, :128]`` ...) and reused
by every layer of that shape within a forward pass, so gradients are summed at the size of
the slices and padded only once per step of the chain.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

Shape = tuple[int, int]


class NestedSlices:
    """Per-scope cache of ``A[:rows, :cols]`` views, valid while ``A`` is the same tensor
    with the same version and the grad mode is unchanged (so, within one forward pass)."""

    def __init__(self, shapes: Iterable[Shape], full: Shape) -> None:
        self.full = full
        smaller = sorted(set(shapes) - {full}, key=lambda s: s[0] * s[1])
        self.parent: dict[Shape, Shape] = {}
        for index, shape in enumerate(smaller):
            containing = [s for s in smaller[index + 1 :] if s[0] >= shape[0] and s[1] >= shape[1]]
            self.parent[shape] = containing[0] if containing else full
        self._source: Tensor | None = None
        self._state: tuple[int, bool] | None = None
        self._slices: dict[Shape, Tensor] = {}

    def get(self, coefficients: Tensor, rows: int, cols: int) -> Tensor:
        """``coefficients[:rows, :cols]``, cut along the chain and reused when possible."""
        shape = (rows, cols)
        if shape == self.full:
            return coefficients
        if shape not in self.parent or not torch.is_grad_enabled():
            return coefficients[:rows, :cols]
        try:
            state = (coefficients._version, torch.is_inference_mode_enabled())
        except RuntimeError:  # tensors without a version counter (inference tensors)
            return coefficients[:rows, :cols]
        if self._source is not coefficients or self._state != state:
            self._source, self._state, self._slices = coefficients, state, {}
        return self._cut(coefficients, shape)

    def _cut(self, coefficients: Tensor, shape: Shape) -> Tensor:
        if shape == self.full:
            return coefficients
        if shape not in self._slices:
            parent = self._cut(coefficients, self.parent[shape])
            self._slices[shape] = parent[: shape[0], : shape[1]]
        return self._slices[shape]

    def clear(self) -> None:
        """Drop cached views (and the graph they hold on to)."""
        self._source, self._state, self._slices = None, None, {}

    def __getstate__(self) -> dict:
        """Copies and pickles carry the chain, never cached tensors."""
        state = self.__dict__.copy()
        state.update(_source=None, _state=None, _slices={})
        return state
