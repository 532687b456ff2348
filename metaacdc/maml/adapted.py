"""The adapted copy :meth:`metaacdc.maml.adaptation.Learner.adapt` returns, and the checks
around adaptation: the first ``N`` logits of an N-way task on a wider head, float inputs
converted to the model's type, NaN and infinite logits refused, a step size checked."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from metaacdc.errors import ConfigError, NonFiniteError
from metaacdc.maml.learner import InLayout, TaskLearner
from metaacdc.runtime.finite import all_finite, require_finite


class FirstLogits(nn.Module):
    """``module`` restricted to the logits of its first ``ways`` classes (an N-way task on
    a head with more outputs)."""

    def __init__(self, module: nn.Module, ways: int) -> None:
        super().__init__()
        self.module = module
        self.ways = ways

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images -> ``(N, ways)`` logits."""
        return self.module(x)[:, : self.ways]


class AdaptedModel(InLayout):
    """The adapted copy :meth:`~metaacdc.maml.adaptation.Learner.adapt` returns: ``module``
    fed its input in ``memory_format``, converted to the model's ``dtype`` (float64 images
    are accepted), and its logits checked to be finite.

    Raises (when called):
        NonFiniteError: NaN or infinite logits, naming the input when it holds such values
            and the adaptation (diverged: use a smaller lr or fewer steps) otherwise.
    """

    def __init__(
        self,
        module: nn.Module,
        memory_format: torch.memory_format,
        dtype: torch.dtype,
        adapted: str = "",
    ) -> None:
        super().__init__(module, memory_format)
        self.dtype = dtype
        self.adapted = adapted  # "after 5 step(s) at lr=0.01", for the message

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` float images -> logits."""
        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        logits = super().forward(x)
        if not all_finite([logits]):
            require_finite("the input of the adapted model", x)  # the likelier cause
            raise diverged(self.adapted, "the adapted model's logits")
        return logits


def diverged(how: str, what: str) -> NonFiniteError:
    """The error of an adaptation that ran away to NaN or infinity (``how``: its steps and
    step size, when known; ``what``: the values found so)."""
    return NonFiniteError(
        f"the adaptation diverged{' ' + how if how else ''}: {what} hold NaN or infinity; "
        "use a smaller lr or fewer steps"
    )


def checked_module(model: nn.Module, dtype: torch.dtype, adapted: str) -> nn.Module:
    """``model`` (an :class:`InLayout`, or :class:`FirstLogits` around one) with its layout
    wrapper made an :class:`AdaptedModel`."""
    if isinstance(model, FirstLogits):
        return FirstLogits(checked_module(model.module, dtype, adapted), model.ways)
    assert isinstance(model, InLayout), type(model)
    return AdaptedModel(model.module, model.memory_format, dtype, adapted)


class FirstWays(TaskLearner):
    """A task learner whose logits (hence its support loss) use the first ``ways`` outputs."""

    def __init__(self, task: TaskLearner, ways: int) -> None:
        super().__init__(task.features, task.head, task.first_order, task.layouts)
        self.ways = ways

    def logits_in(self, x: Tensor, memory_format: torch.memory_format) -> Tensor:
        return super().logits_in(x, memory_format)[:, : self.ways]

    def as_module(self) -> nn.Module:
        return FirstLogits(super().as_module(), self.ways)


def checked_lr(lr: object) -> float | None:
    """``lr`` as a float (``None`` stays ``None``: the run's own).

    Raises:
        ConfigError: not a finite positive number.
    """
    if lr is None:
        return None
    value = float(lr) if isinstance(lr, numbers.Real) and not isinstance(lr, bool) else None
    if value is None or not 0 < value < math.inf:  # NaN fails the comparison too
        raise ConfigError(f"lr={lr!r} is not valid; expected a finite positive number")
    return value
