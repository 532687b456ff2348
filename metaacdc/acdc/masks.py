"""Atom-drop masks supplied from outside the layer, for engines that draw them themselves.

An :class:`~metaacdc.acdc.layer.ACDCConv2d` in training mode draws its keep mask from the
global generator on every forward. An engine that runs many tasks in one vectorised pass
(:mod:`metaacdc.maml.batched`) cannot draw inside the pass (``torch.func.vmap`` refuses
random operations), so it draws the masks beforehand and hands each layer its mask through
:func:`supplied_atom_masks`: within the block, a layer about to draw asks the supplier
instead. The setting lives in a :class:`contextvars.ContextVar` (no global state: blocks
nest, and each restores what it found).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor, nn

#: ``supplier(layer, mask_shape) -> bool mask`` of the draw ``layer`` is about to make
MaskSupplier = Callable[[nn.Module, tuple[int, ...]], Tensor]

_SUPPLIER: ContextVar[MaskSupplier | None] = ContextVar("metaacdc_atom_masks", default=None)


@contextmanager
def supplied_atom_masks(supplier: MaskSupplier) -> Iterator[None]:
    """Within the block, every atom-drop draw of an ACDC layer is ``supplier(layer, shape)``
    (a bool keep mask of that shape, or a tensor that broadcasts as one) instead of
    ``torch.rand(shape) < keep``."""
    token = _SUPPLIER.set(supplier)
    try:
        yield
    finally:
        _SUPPLIER.reset(token)


def supplied_mask(layer: nn.Module, shape: tuple[int, ...]) -> Tensor | None:
    """The mask the supplier in force gives ``layer`` for a draw of ``shape``; ``None``
    outside :func:`supplied_atom_masks` (the layer then draws its own)."""
    supplier = _SUPPLIER.get()
    return None if supplier is None else supplier(layer, shape)
