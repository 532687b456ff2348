"""Refusing NaN and infinity where values enter or leave the library (images, checkpoint
weights, logits, the training loss), so a bad value stops with one line naming it instead of
spreading into plausible-looking results."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from metaacdc.errors import NonFiniteError


def require_finite(what: str, values: torch.Tensor) -> None:
    """Raise :class:`~metaacdc.errors.NonFiniteError` naming ``what`` unless every value of
    ``values`` is finite (integer tensors always are)."""
    floating = values.is_floating_point() or values.is_complex()
    if floating and not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise NonFiniteError(
            f"{what} holds {bad} non-finite value(s) (NaN or infinity) of {values.numel()}"
        )


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every floating-point tensor of ``tensors`` is finite, found
    with a handful of operators and one host synchronisation however many tensors there are
    (the tensors must share a device): their norms in one fused operator, as
    ``clip_grad_norm_`` computes them. A norm also overflows for values near the top of the
    type's range (above about 1e19 in float32), which counts as not finite: such weights
    have diverged as surely."""
    floats = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return True
    norms = list(torch._foreach_norm(floats))
    if len({norm.dtype for norm in norms}) > 1:
        norms = [norm.float() for norm in norms]
    return bool(torch.isfinite(torch.stack(norms)).all())


def first_non_finite(value: object, name: str) -> str | None:
    """The name of the first tensor or float inside ``value`` (nested dicts, lists and
    tuples, named as Python indexes them: ``name['key'][0]``) that holds NaN or infinity;
    ``None`` when there is none. What a checkpoint's loader reports."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            return None if bool(torch.isfinite(value).all()) else name
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else name
    if isinstance(value, dict):
        items: Iterable[tuple[object, object]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = first_non_finite(item, f"{name}[{key!r}]")
        if found is not None:
            return found
    return None
