"""Equally shaped few-shot tasks stacked along a task dimension, for the batched engine
(:mod:`metaacdc.maml.batched`): stacking, and the shape checks that refuse a task of another
shape (tasks are never padded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metaacdc.data import Episode
from metaacdc.errors import ConfigError


@dataclass(frozen=True)
class TaskBatch:
    """Equally shaped tasks stacked along a leading task dimension ``T``.

    Attributes:
        support_x: ``(T, S, C, H, W)`` float images.
        support_y: ``(T, S)`` int64 labels.
        query_x: ``(T, Q, C, H, W)`` float images.
        query_y: ``(T, Q)`` int64 labels (``None`` where only logits are wanted).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor | None

    @property
    def tasks(self) -> int:
        return int(self.support_x.shape[0])


def task_shapes(task: Episode) -> tuple[tuple[int, ...], ...]:
    """The shapes of a task's support and query images and labels: tasks batch together
    when theirs are equal."""
    return tuple(tuple(tensor.shape) for tensor in task[:4])


def stack_tasks(tasks: Sequence[Episode], device: torch.device) -> TaskBatch:
    """Stack ``tasks`` on ``device``; every task must have the first task's shapes.

    Raises:
        ConfigError: no task, or a task whose support or query shapes differ from the first
            task's (tasks are never padded: batch tasks of one shape together).
    """
    if not tasks:
        raise ConfigError("the batched engine got no task; give at least one episode")
    names = ("support_x", "support_y", "query_x", "query_y")
    first = task_shapes(tasks[0])
    for index, task in enumerate(tasks[1:], start=1):
        for name, got, want in zip(names, task_shapes(task), first):
            if got != want:
                raise ConfigError(
                    f"task {index} has {name} of shape {got}, task 0 of shape {want}; the "
                    "batched engine runs equally shaped tasks only (batch tasks by shape)"
                )
    # images stacked task-minor in memory, (N, T, ...): the layout batched convolutions
    # take without a copy (see task_forward.tasks_forward); labels task-major
    images = [_stacked(tasks, i, 1, device).transpose(0, 1) for i in (0, 2)]
    labels = [_stacked(tasks, i, 0, device) for i in (1, 3)]
    return TaskBatch(images[0], labels[0], images[1], labels[1])


def _stacked(tasks: Sequence[Episode], field: int, dim: int, device: torch.device) -> Tensor:
    """Field ``field`` of every task stacked along ``dim``, on ``device``. Episodes in pinned
    memory (the loader's, for a GPU) are stacked into pinned memory, so that the copy to the
    GPU does not block."""
    parts = [task[field] for task in tasks]
    pinned = device.type == "cuda" and parts[0].is_pinned()
    shape = list(parts[0].shape)
    shape.insert(dim, len(parts))
    out = torch.empty(shape, dtype=parts[0].dtype, pin_memory=pinned)
    torch.stack(parts, dim, out=out)
    return out.to(device, non_blocking=True)


def checked_batch(
    support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor | None = None
) -> TaskBatch:
    """A :class:`TaskBatch` of already stacked tensors, their shapes checked.

    Raises:
        ConfigError: tensors that are not ``(T, N, ...)`` stacks of one shape.
    """
    if support_x.dim() != 5 or query_x.dim() != 5:
        raise ConfigError(
            f"support_x {tuple(support_x.shape)} and query_x {tuple(query_x.shape)} must be "
            "(T, N, C, H, W): tasks stacked along a first dimension"
        )
    tasks = support_x.shape[0]
    if tuple(support_y.shape) != tuple(support_x.shape[:2]):
        raise ConfigError(
            f"support_y has shape {tuple(support_y.shape)}; expected {tuple(support_x.shape[:2])}"
        )
    if query_x.shape[0] != tasks or query_x.shape[2:] != support_x.shape[2:]:
        raise ConfigError(
            f"query_x has shape {tuple(query_x.shape)}; expected ({tasks}, Q, "
            f"{', '.join(map(str, support_x.shape[2:]))})"
        )
    if query_y is not None and tuple(query_y.shape) != tuple(query_x.shape[:2]):
        raise ConfigError(
            f"query_y has shape {tuple(query_y.shape)}; expected {tuple(query_x.shape[:2])}"
        )
    return TaskBatch(support_x, support_y, query_x, query_y)
