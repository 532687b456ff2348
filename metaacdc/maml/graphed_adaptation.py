"""Evaluation's batched adaptation replayed as CUDA graphs, one per task shape.

The batched engine's :meth:`~metaacdc.maml.batched.BatchedMAML.adapted_logits` (validation,
``metaacdc evaluate``, :meth:`metaacdc.api.Learner.predict_tasks`) adapts many tasks at
once. On CUDA that call is captured (:class:`metaacdc.runtime.cuda_graphs.GraphedCall`) the
second time a shape of call is seen, and replayed from then on: a first sighting runs
eagerly, as a one-off call gains nothing from a capture. A few shapes are kept; others run
eagerly. Calls that draw atom-drop masks (a model in training mode) always run eagerly. A
capture that fails turns capture off for the engine, with one warning saying why: the
results are the eager ones either way.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence

from torch import Tensor

from metaacdc.maml.task_batch import TaskBatch
from metaacdc.runtime.cuda_graphs import Capture, GraphedCall

#: captured shapes kept per engine (each holds its activations' memory)
MAX_GRAPHS = 4

#: ``(batch, steps, seeds, lr, ways) -> (T, Q, ways)`` logits: the eager adaptation
Adaptation = Callable[[TaskBatch, int, Sequence[int | None], float | None, int | None], Tensor]


class AdaptationGraphs:
    """The captured adaptations of one engine, by call shape.

    Args:
        adapt: the eager adaptation to capture.
        draws: whether an adaptation on images like ``example`` draws atom-drop masks.
        setting: what about the learner changes an adaptation besides its tensors (its
            modes, its inner step size), read at each call: part of the shape's key.
        enabled: capture at all (the device is CUDA and ``cuda_graphs`` is not ``off``).
        capture: how to capture (default ``torch.cuda.graph``; a
            :class:`~metaacdc.runtime.cuda_graphs.Rehearsal` on the CPU in tests).
    """

    def __init__(
        self,
        adapt: Adaptation,
        draws: Callable[[Tensor], bool],
        setting: Callable[[], tuple[object, ...]],
        *,
        enabled: bool,
        capture: Capture | None = None,
    ) -> None:
        self._adapt, self._draws, self._setting = adapt, draws, setting
        self.enabled = enabled
        self.off_because: str | None = None
        self._capture = capture
        self._seen: Counter[tuple[object, ...]] = Counter()
        self._calls: dict[tuple[object, ...], GraphedCall] = {}

    @property
    def captured(self) -> int:
        """How many call shapes are captured now."""
        return len(self._calls)

    def logits(
        self,
        batch: TaskBatch,
        steps: int,
        seeds: Sequence[int | None],
        lr: float | None,
        ways: int | None,
    ) -> Tensor | None:
        """The adapted logits by a replay, or None where this call runs eagerly."""
        if not self.enabled or self.off_because is not None:
            return None
        if any(seed is not None for seed in seeds) or self._draws(batch.support_x[0]):
            return None
        inputs = [batch.support_x, batch.support_y, batch.query_x]
        key = (
            *((tuple(t.shape), t.dtype, t.device) for t in inputs),
            steps,
            lr,
            ways,
            self._setting(),
        )
        call = self._calls.get(key)
        if call is None:
            self._seen[key] += 1
            if self._seen[key] < 2 or len(self._calls) >= MAX_GRAPHS:
                return None
            tasks = batch.tasks

            def adapt(static: Sequence[Tensor]) -> list[Tensor]:
                sx, sy, qx = static
                return [self._adapt(TaskBatch(sx, sy, qx, None), steps, [None] * tasks, lr, ways)]

            try:
                call = GraphedCall(adapt, inputs, capture=self._capture)
            except RuntimeError as error:  # CUDA refused the capture: eager from now on
                self.off_because = f"{type(error).__name__}: {error}".splitlines()[0]
                warnings.warn(f"CUDA graphs off for adaptation ({self.off_because})", stacklevel=2)
                return None
            self._calls[key] = call
        return call(inputs)[0].clone()
