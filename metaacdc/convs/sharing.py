"""Finding the convolutions of a model and cutting them into sharing scopes.

Shared by ACDC (coefficients shared per scope) and the kernel-sharing baseline (whole
kernels shared per scope). A *block* is a run of consecutive layers, in module order, with
the same output width and the same output feature size (paper 000 §2.3): a ResNet stage,
or a VGG block between two poolings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metaacdc.errors import check_choice

SCOPES: tuple[str, ...] = ("layer", "block", "net")


@dataclass
class ConvSite:
    """One convolution of a model, with what block detection needs to know about it."""

    name: str
    module: nn.Module
    out_channels: int
    stride: tuple[int, int]
    feature_size: tuple[int, int] | None = None


def find_sites(
    model: nn.Module,
    select: Callable[[nn.Module], bool],
    example_input: Tensor | None = None,
) -> list[ConvSite]:
    """The modules ``select`` accepts, in module order, with their output feature sizes
    measured by one forward pass of ``example_input`` when it is given."""
    sites = [
        ConvSite(name, module, int(module.out_channels), _pair(module.stride))
        for name, module in model.named_modules()
        if select(module)
    ]
    if example_input is not None and sites:
        _measure_feature_sizes(model, sites, example_input)
    return sites


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, tuple):
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))  # type: ignore[call-overload]


@torch.no_grad()
def _measure_feature_sizes(model: nn.Module, sites: list[ConvSite], example_input: Tensor) -> None:
    def hook_for(site: ConvSite) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            site.feature_size = (int(output.shape[-2]), int(output.shape[-1]))

        return hook

    handles = [site.module.register_forward_hook(hook_for(site)) for site in sites]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # no atom-drop or dropout: the pass must not consume random numbers
        model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode


def split_blocks(sites: list[ConvSite]) -> list[list[ConvSite]]:
    """Consecutive runs with equal output width and feature size.

    Without measured feature sizes a stride other than 1 also starts a new block (it is the
    only size change visible without a forward pass; pooling is not).
    """
    blocks: list[list[ConvSite]] = []
    for site in sites:
        if blocks and _same_block(blocks[-1][-1], site):
            blocks[-1].append(site)
        else:
            blocks.append([site])
    return blocks


def _same_block(previous: ConvSite, site: ConvSite) -> bool:
    if previous.out_channels != site.out_channels:
        return False
    if previous.feature_size is not None and site.feature_size is not None:
        return previous.feature_size == site.feature_size
    return site.stride == (1, 1)


def scope_groups(sites: list[ConvSite], scope: str) -> list[list[ConvSite]]:
    """Cut ``sites`` into the groups that share within ``scope`` (layer, block or net)."""
    check_choice("share", scope, SCOPES)
    if scope == "layer":
        return [[site] for site in sites]
    if scope == "block":
        return split_blocks(sites)
    return [sites] if sites else []
