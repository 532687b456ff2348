"""One forward pass of every task of a meta-batch, vectorised with ``torch.func.vmap``.

Each task's model is ``module`` with that task's parameters (``torch.func.functional_call``;
tensors registered in several modules, such as a shared ACDC coefficient tensor, stay one
tensor), or the module's own parameters for all tasks (the shared features of
``adapt="head"``). Its atom-drop masks are handed to its ACDC layers in the order they draw
(:class:`~metaacdc.maml.atom_drop.MaskReplay`), and batch norm and pooling run by the rules
of :mod:`metaacdc.maml.task_rules`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn
from torch.func import functional_call, vmap

from metaacdc.acdc.masks import supplied_atom_masks
from metaacdc.maml.atom_drop import MaskReplay
from metaacdc.maml.task_rules import tasks_beside_channels
from metaacdc.runtime.fast_paths import cpu_fast_paths

#: parameters by name, each with a leading task dimension
Params = dict[str, Tensor]


def tasks_forward(
    module: nn.Module, params: Params | None, x: Tensor, masks: Sequence[Tensor]
) -> Tensor:
    """``module`` on every task's batch: ``(T, N, ...)`` outputs.

    Args:
        module: the model (or part of it) every task runs.
        params: ``(T, ...)`` parameters by name, task ``t`` running with the ``t``-th slices;
            ``None``: the module's own parameters for every task.
        x: ``(T, N, ...)`` inputs. They are handed to vmap as ``(N, T, ...)``, a view where
            batched convolutions need no copy when the tasks were stacked that way in memory
            (:func:`metaacdc.maml.task_batch.stack_tasks` does).
        masks: ``(T, *shape)`` atom-drop keep masks of the pass, one per draw, in call
            order (empty where nothing draws).

    The CPU fast paths are off within (:mod:`metaacdc.runtime.fast_paths`): they branch on
    tensor values, which vmap cannot.
    """

    def one_task(task_params: Params | None, task_x: Tensor, task_masks: list[Tensor]) -> Tensor:
        with tasks_beside_channels(), _replaying(task_masks):
            if task_params is None:
                out: Tensor = module(task_x)
            else:
                out = functional_call(module, task_params, (task_x,), tie_weights=True)
        return out

    with cpu_fast_paths(False):
        in_dims = (None if params is None else 0, 1, 0)
        batched: Tensor = vmap(one_task, in_dims=in_dims)(params, x.transpose(0, 1), list(masks))
    return batched


@contextmanager
def _replaying(masks: list[Tensor]) -> Iterator[None]:
    """Within the block, the ACDC layers' atom-drop draws are ``masks``, in order."""
    if not masks:
        yield
        return
    replay = MaskReplay(masks)
    with supplied_atom_masks(replay):
        yield
    if not replay.exhausted:
        raise RuntimeError("a forward drew fewer atom-drop masks than planned")
