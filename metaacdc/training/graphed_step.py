"""The batched engine's whole meta-update replayed as one CUDA graph (``--cuda-graphs``).

:func:`metaacdc.training.step.batched_train_step` launches every kernel of a meta-update
from Python: inner loop, query pass, meta-gradient (second order included) and the Adam
step. :class:`GraphedTrainStep` captures all of that once per run
(:class:`metaacdc.runtime.cuda_graphs.GraphedCall`) and replays it for every meta-batch,
the episode and its atom-drop masks (drawn beforehand from the task seeds, as the eager
step draws them) copied into static buffers. The first replay starts from the state the
eager step would start from (the warm-up calls' changes are undone), so a captured run
takes the eager run's steps up to float rounding, and a resumed captured run continues
exactly as an uninterrupted one on the same device.

The optimizer must be a ``torch.optim.Adam`` built with ``capturable=True`` on CUDA (its
step count on the device, no host read inside the step): :func:`adam` builds it, and
:func:`match_capturable` fixes a state loaded from a checkpoint written either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from metaacdc.data import Episode
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.task_batch import TaskBatch
from metaacdc.runtime.cuda_graphs import Capture, GraphedCall
from metaacdc.training.step import StepStats, autocast_for


def adam(parameters: Iterable[nn.Parameter], lr: float, *, capturable: bool) -> torch.optim.Adam:
    """The meta-optimizer: Adam, ``capturable`` where its step is captured (CUDA)."""
    return torch.optim.Adam(parameters, lr=lr, capturable=capturable)


def match_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Make a state loaded into ``optimizer`` fit the ``capturable`` flag it was built
    with: a checkpoint records the flag of the run that wrote it (``load_state_dict``
    takes it over), and a captured step keeps its step counts on the parameters' device,
    an eager one on the CPU. Values are unchanged (step counts are whole numbers)."""
    capturable = bool(optimizer.defaults.get("capturable", False))
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if isinstance(step, Tensor):
                device = param.device if capturable else torch.device("cpu")
                state["step"] = step.to(device=device, dtype=torch.float32)


def prime_adam(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam's state where it has none yet, as its first step would find it (zero
    moments, zero steps), without changing a weight: a capture needs the state tensors
    to exist before it, since the replays update them in place."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    fresh = [p for p in params if not optimizer.state.get(p)]
    if not fresh:
        return
    fresh_ids = {id(p) for p in fresh}
    weights = [p.detach().clone() for p in params]
    saved_grads = [p.grad for p in params]
    for param in params:
        param.grad = torch.zeros_like(param) if id(param) in fresh_ids else None
    optimizer.step()
    with torch.no_grad():
        for param, weight, grad in zip(params, weights, saved_grads):
            param.copy_(weight)
            param.grad = grad
        for param in fresh:
            for value in optimizer.state[param].values():
                if isinstance(value, Tensor):
                    value.zero_()


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    ]


class GraphedTrainStep:
    """:func:`~metaacdc.training.step.batched_train_step` (one process), captured on its
    first call and replayed on every later one.

    Args:
        engine: the batched engine over the meta-learner (on CUDA, or on the CPU with a
            :class:`~metaacdc.runtime.cuda_graphs.Rehearsal`).
        optimizer: Adam over the meta-learner's parameters (``capturable=True`` on CUDA).
        inner_steps: inner SGD steps per task.
        amp: bfloat16 autocast.
        capture: default ``torch.cuda.graph``.

    Every call must bring tasks of the first call's shapes (a run's meta-batches do).
    """

    def __init__(
        self,
        engine: BatchedMAML,
        optimizer: torch.optim.Optimizer,
        inner_steps: int,
        *,
        amp: bool = False,
        capture: Capture | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Adam):
            raise TypeError(f"a captured meta-update steps Adam, not {type(optimizer).__name__}")
        self.engine, self.optimizer, self.inner_steps = engine, optimizer, inner_steps
        self.amp, self._capture = amp, capture
        self._call: GraphedCall | None = None
        self._forwards: list[int] = []

    @property
    def captured(self) -> bool:
        """Whether the step has been captured (its first call succeeded)."""
        return self._call is not None

    def __call__(self, tasks: Sequence[Episode], task_seeds: Sequence[int]) -> StepStats:
        """One meta-update on ``tasks`` (each task's masks drawn from its seed)."""
        batch = self.engine.batch(tasks)
        masks = self.engine.step_masks(batch, self.inner_steps, task_seeds)
        assert batch.query_y is not None
        inputs = [batch.support_x, batch.support_y, batch.query_x, batch.query_y]
        inputs += [mask for forward in masks for mask in forward]
        if self._call is None:
            self._forwards = [len(forward) for forward in masks]
            prime_adam(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            self._call = GraphedCall(
                self._step,
                inputs,
                state=[*params, *_state_tensors(self.optimizer)],
                capture=self._capture,
            )
        loss, correct = torch.stack(self._call(inputs)).tolist()  # one synchronisation
        return StepStats(loss=loss, accuracy=correct / batch.query_y.numel())

    def _step(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """The captured computation: meta-gradient and Adam step on static inputs."""
        support_x, support_y, query_x, query_y, *flat = inputs
        masks, start = [], 0
        for count in self._forwards:
            masks.append(list(flat[start : start + count]))
            start += count
        self.optimizer.zero_grad(set_to_none=True)
        batch = TaskBatch(support_x, support_y, query_x, query_y)
        with autocast_for(support_x.device, self.amp):
            result = self.engine.masked_meta_gradient(batch, self.inner_steps, masks)
        self.optimizer.step()
        return [result.loss.float(), result.hits.sum().float()]
