"""Atom-drop masks drawn ahead of a vectorised pass, the same masks a task draws on its own.

The learn2learn engine (:func:`metaacdc.training.step.meta_train_step`) runs each task under
its own seed: within the task every ACDC layer in training mode draws
``torch.rand(mask_shape) < keep`` from the global generator, layer after layer in call order,
forward after forward (the inner steps' support passes, then the query pass). A vectorised
engine cannot draw inside ``vmap``, so it replays that sequence beforehand:

1. :func:`plan_draws` records which draws one forward makes (shapes, keep probabilities), by
   running the module once on zeros with a recording supplier
   (:func:`metaacdc.acdc.masks.supplied_atom_masks`) that draws nothing;
2. :func:`draw_masks` draws them for every task from a generator seeded with the task's seed
   (the global generator, task after task, where there is no seed), in the same order and
   with the same shapes and dtype as the task would, so the masks are the learn2learn
   engine's bit for bit, and do not depend on which other tasks share the batch;
3. :class:`MaskReplay` hands them to the layers within the vectorised forward.

On the CPU a task's draws are one ``torch.rand`` call (the CPU generator fills a tensor
element after element, so one call of the total size gives the numbers of the separate
calls, in order; ``tests/maml/test_batched_masks.py`` checks it). Other devices (CUDA's
Philox generator advances by whole blocks per call) draw each mask by its own call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metaacdc.acdc.masks import supplied_atom_masks
from metaacdc.runtime.fast_paths import cpu_fast_paths


@dataclass(frozen=True)
class MaskDraw:
    """One atom-drop draw of a forward: a keep mask of ``shape``, each entry kept with
    probability ``keep``."""

    shape: tuple[int, ...]
    keep: float

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


def plan_draws(module: nn.Module, example: Tensor) -> tuple[MaskDraw, ...]:
    """The draws one forward of ``module`` (as it is now: its modes, its atom-drop rates)
    makes on a batch shaped like ``example``, in call order. Runs the module once on zeros
    without autograd and without drawing anything."""
    draws: list[MaskDraw] = []

    def record(layer: nn.Module, shape: tuple[int, ...]) -> Tensor:
        draws.append(MaskDraw(tuple(shape), 1.0 - float(layer.atom_drop)))  # type: ignore[arg-type]
        return torch.ones(shape, dtype=torch.bool, device=example.device)

    zeros = torch.zeros(example.shape, dtype=example.dtype, device=example.device)
    with supplied_atom_masks(record), torch.no_grad(), cpu_fast_paths(False):
        module(zeros)
    return tuple(draws)


def draw_masks(
    draws: Sequence[MaskDraw], seeds: Sequence[int | None], device: torch.device
) -> list[Tensor]:
    """Every task's masks for ``draws``: one ``(tasks, *shape)`` bool tensor per draw.

    Task ``t`` draws from a generator seeded with ``seeds[t]`` (``None``: the global
    generator of ``device``, tasks in order), as :func:`torch.rand` would within
    ``torch.manual_seed(seeds[t])``.
    """
    if not draws or not seeds:
        return []
    total = sum(draw.numel for draw in draws)
    uniforms = []
    for seed in seeds:
        generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        if device.type == "cpu":
            uniforms.append(torch.rand(total, generator=generator, device=device))
        else:
            parts = [torch.rand(d.shape, generator=generator, device=device) for d in draws]
            uniforms.append(torch.cat([part.flatten() for part in parts]))
    stacked = torch.stack(uniforms)  # (tasks, total)
    keeps = {draw.keep for draw in draws}
    if len(keeps) == 1:
        kept = stacked < keeps.pop()
    else:  # a float tensor of the rates: compared in the uniforms' dtype, as a scalar is
        rates = torch.tensor(
            [draw.keep for draw in draws for _ in range(draw.numel)],
            dtype=stacked.dtype,
            device=device,
        )
        kept = stacked < rates
    masks, start = [], 0
    for draw in draws:
        masks.append(kept[:, start : start + draw.numel].view(len(seeds), *draw.shape))
        start += draw.numel
    return masks


class MaskReplay:
    """A mask supplier (:func:`metaacdc.acdc.masks.supplied_atom_masks`) handing out
    ``masks`` in order, one per draw; a draw of another shape, or one more than planned,
    is an error (the plan no longer matches the model)."""

    def __init__(self, masks: Sequence[Tensor]) -> None:
        self._masks = list(masks)
        self._next = 0

    def __call__(self, layer: nn.Module, shape: tuple[int, ...]) -> Tensor:
        if self._next >= len(self._masks):
            raise RuntimeError(
                f"{type(layer).__name__} drew an atom-drop mask beyond the "
                f"{len(self._masks)} planned for this forward; the model changed since its "
                "draws were planned"
            )
        mask = self._masks[self._next]
        if tuple(mask.shape) != tuple(shape):
            raise RuntimeError(
                f"{type(layer).__name__} drew an atom-drop mask of shape {tuple(shape)}, "
                f"but the planned draw was {tuple(mask.shape)}"
            )
        self._next += 1
        return mask

    @property
    def exhausted(self) -> bool:
        """Whether every planned mask was handed out."""
        return self._next == len(self._masks)
