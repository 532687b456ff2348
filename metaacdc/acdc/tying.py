"""Sharing one coefficient tensor among the ACDC layers of a scope."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaacdc.acdc.layer import ACDCConv2d, init_coefficients
from metaacdc.acdc.slicing import NestedSlices
from metaacdc.convs.sharing import SCOPES, find_sites, scope_groups
from metaacdc.errors import ConfigError, check_choice

#: ACDC's sharing choices: each sharing scope, and its grouped ``g-`` variant
SHARES: tuple[str, ...] = (*SCOPES, *(f"g-{scope}" for scope in SCOPES))


def split_share(share: str, group_size: int | None) -> tuple[str, int | None]:
    """``("g-net", 32)`` -> ``("net", 32)``; also accepts ``("net", 32)`` as the g- variant."""
    check_choice("share", share, SHARES)
    if share.startswith("g-"):
        if group_size is None:
            raise ConfigError(f"share={share!r} needs group_size (channels per group), e.g. 32")
        return share[2:], group_size
    return share, group_size


def grouped_spec(conv: str, group_size: int | None) -> str:
    """The name of the conv kind that spec ``conv`` builds with ``group_size``: an ungrouped
    ACDC scope given a group size builds its grouped variant (see :func:`split_share`), so
    ``("acdc-net", 32)`` -> ``"acdc-g-net"``; any other spec is returned unchanged."""
    scope = conv.removeprefix("acdc-")
    if group_size is None or scope == conv or scope not in SCOPES:
        return conv
    return f"acdc-g-{scope}"


def layer_group_size(in_channels: int, group_size: int | None) -> int | None:
    """The group size a layer uses: none for layers narrower than one group.

    A layer with fewer input channels than ``s`` (the RGB stem) cannot be split into groups;
    it is decomposed without grouping and keeps coefficients of its own (it joins no scope).
    """
    if group_size is None or in_channels < group_size:
        return None
    return group_size


def tie_coefficients(
    model: nn.Module, share: str, example_input: Tensor | None = None
) -> nn.Module:
    """Make the ACDC layers of each ``share`` scope read one coefficient tensor.

    ``share`` is layer, block or net (the grouping of each layer is already fixed). A scope's
    tensor is allocated at the widest layer's size and sliced (paper 000 §2.3); grouped
    layers share an ``s x s x m`` tensor among themselves, apart from ungrouped ones.
    """
    sites = find_sites(model, lambda m: isinstance(m, ACDCConv2d), example_input)
    if share == "layer":
        return model
    for group in scope_groups(sites, share):
        layers: list[ACDCConv2d] = [site.module for site in group]  # type: ignore[misc]
        grouped = [layer for layer in layers if layer.layout is not None]
        plain = [layer for layer in layers if layer.layout is None]
        # A grouped scope: stems without grouping keep their own coefficients.
        for members in [grouped] if grouped else [plain]:
            if len(members) > 1:
                _share(members)
    return model


def _share(layers: list[ACDCConv2d]) -> None:
    atoms = {layer.num_atoms for layer in layers}
    if len(atoms) != 1:
        raise ConfigError(f"layers sharing coefficients must have one atom count, got {atoms}")
    rows = max(layer.unit_shape[0] for layer in layers)
    cols = max(layer.unit_shape[1] for layer in layers)
    first = layers[0].coefficients
    shared = nn.Parameter(
        torch.empty(rows, cols, atoms.pop(), device=first.device, dtype=first.dtype)
    )
    init_coefficients(shared)
    slices = NestedSlices([layer.unit_shape for layer in layers], (rows, cols))
    for layer in layers:
        layer.share_coefficients(shared, slices)
