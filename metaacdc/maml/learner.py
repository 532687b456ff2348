"""The meta-learner: a backbone wrapped by learn2learn's MAML (or Meta-SGD), adapting the
whole network or only its head (ANIL-style), and the one adaptation loop every caller uses
(training, validation, the evaluator and :mod:`metaacdc.api`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaacdc.backbones import Backbone
from metaacdc.maml.batch_norm import fused_double_backward
from metaacdc.maml.l2l import learn2learn as l2l
from metaacdc.runtime.fast_paths import cpu_fast_paths_enabled


@dataclass(frozen=True)
class TaskLayouts:
    """Image layouts of a task's forward passes: ``support`` for the inner-loop passes,
    ``query`` for the adapted model (query passes and :meth:`TaskLearner.as_module`)."""

    support: torch.memory_format
    query: torch.memory_format


def task_layouts(first_order: bool) -> TaskLayouts:
    """The fastest layouts for a task's passes (CPU timings, Conv4 at 84 px, 5W1S), or the
    default layout for every pass where the CPU fast paths are off
    (:mod:`metaacdc.runtime.fast_paths`; on every device: this fast path is the one that
    also acts on a GPU).

    Channels-last lets oneDNN (CPU) and cuDNN run convolutions, batch norm and pooling
    without layout conversions: first-order adaptation is 1.6x faster in it. A second-order
    inner loop stays in the default layout, where the double backward of convolution and
    batch norm is faster (channels-last made it 1.4x slower); its query pass, a single
    first-order pass over the largest batch, still runs channels-last (about 2x faster
    forward). Results are the same up to float rounding either way.
    """
    if not cpu_fast_paths_enabled():
        return TaskLayouts(torch.contiguous_format, torch.contiguous_format)
    if first_order:
        return TaskLayouts(torch.channels_last, torch.channels_last)
    return TaskLayouts(torch.contiguous_format, torch.channels_last)


def _contiguous(grad: Tensor) -> Tensor:
    return grad.contiguous()


def meta_sgd_step(learner: l2l.algorithms.MetaSGD, loss: Tensor, first_order: bool) -> None:
    """One Meta-SGD inner step on ``learner``'s module, in place: each distinct parameter
    tensor ``p`` becomes ``p - lr_p * g_p`` once (``g_p`` its gradient, summed over every
    module holding it; ``lr_p`` the step size the wrapper pairs with it, in the order of
    ``module.parameters()``), and every module holding ``p`` reads the updated tensor.

    learn2learn's ``meta_sgd_update`` keeps no memo: only the first module holding a shared
    tensor (an ACDC coefficient tensor, an anchored kernel) got the update, the others kept
    the old tensor, and from the next step the tensors' pairing with the step sizes was off
    (a crash where the shapes differ). Without shared tensors this is its update, operation
    for operation. Second order, the gradients are taken with ``create_graph=True``, so the
    update is differentiable in the meta-parameters and in the step sizes.
    """
    second_order = not first_order
    params = list(learner.module.parameters())  # each shared tensor once
    grads = torch.autograd.grad(loss, params, retain_graph=second_order, create_graph=second_order)
    updated = {id(p): p - lr * g for p, lr, g in zip(params, learner.lrs, grads, strict=True)}
    for module in learner.module.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = updated[id(param)]


class TaskLearner:
    """One task's copy of the model: ``learner(x)`` gives logits of the adapted model,
    ``learner.adapt(loss)`` takes one inner SGD step on a loss of
    ``learner.support_logits(x)``. Gradients reach the meta-parameters through the copy.

    Images are given to the model in the layouts of ``layouts`` (see :func:`task_layouts`).
    A second-order inner loop differentiates its batch norms twice through
    :func:`~metaacdc.maml.batch_norm.fused_double_backward` (on the CPU) where the CPU fast
    paths are on when :meth:`support_logits` runs (:mod:`metaacdc.runtime.fast_paths`).
    """

    def __init__(
        self, features: nn.Module | None, head: nn.Module, first_order: bool, layouts: TaskLayouts
    ) -> None:
        self.features = features
        self.head = head
        self.first_order = first_order
        self.layouts = layouts
        self._hand_back_pending = False

    def logits_in(self, x: Tensor, memory_format: torch.memory_format) -> Tensor:
        """Logits of the model as it is now, fed ``x`` in ``memory_format``."""
        x = x.contiguous(memory_format=memory_format)
        return self.head(x if self.features is None else self.features(x))

    def support_logits(self, x: Tensor) -> Tensor:
        """Logits for an inner-loop loss (support layout)."""
        if self.first_order or not cpu_fast_paths_enabled():
            return self.logits_in(x, self.layouts.support)
        with fused_double_backward():
            return self.logits_in(x, self.layouts.support)

    def __call__(self, x: Tensor) -> Tensor:
        """Logits of the adapted model (query layout)."""
        if self._hand_back_pending:
            self._hand_back_contiguous()
        return self.logits_in(x, self.layouts.query)

    def adapt(self, loss: Tensor) -> None:
        """One inner SGD step on ``loss``, in place: learn2learn's MAML update, or for
        Meta-SGD :func:`meta_sgd_step` (which keeps a tensor shared by several modules
        shared)."""
        if isinstance(self.head, l2l.algorithms.MetaSGD):
            meta_sgd_step(self.head, loss, self.first_order)
        else:
            self.head.adapt(loss, first_order=self.first_order)  # type: ignore[operator]
        self._hand_back_pending = (
            not self.first_order and self.layouts.query != self.layouts.support
        )

    def _hand_back_contiguous(self) -> None:
        """Make the gradients of the adapted weights contiguous before they enter the
        second-order graph of the inner loop.

        A query pass in another layout gives weight gradients in that layout (channels-last
        for 4-d weights), and batch norm's double backward over them was 2.4x slower.
        """
        for weight in self.head.parameters():
            if weight.grad_fn is not None:  # the adapted copy, never a stored leaf
                weight.register_hook(_contiguous)
        self._hand_back_pending = False

    def as_module(self) -> nn.Module:
        """The adapted model as a module (``module(x)`` gives logits)."""
        model = self.head if self.features is None else nn.Sequential(self.features, self.head)
        return InLayout(model, self.layouts.query)


class InLayout(nn.Module):
    """``module`` fed its input in ``memory_format`` (the layout it was adapted in)."""

    def __init__(self, module: nn.Module, memory_format: torch.memory_format) -> None:
        super().__init__()
        self.module = module
        self.memory_format = memory_format

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images -> logits."""
        return self.module(x.contiguous(memory_format=self.memory_format))


class MetaLearner(nn.Module):
    """``model`` wrapped for meta-learning.

    Args:
        model: a :class:`~metaacdc.backbones.Backbone`.
        inner_lr: SGD step size of the inner loop (the initial one for Meta-SGD).
        first_order: drop second-order terms (CloserLook's ``maml_approx``).
        adapt: ``"all"`` adapts every parameter; ``"head"`` only the linear head, the
            features being meta-learned but frozen within a task (ANIL).
        meta_sgd: learn one inner step size per parameter (``learn2learn.algorithms.MetaSGD``;
            its inner step is :func:`meta_sgd_step`).

    Its task copies take the CPU fast paths (fused batch-norm double backward, channels-last
    layouts) unless a ``cpu_fast_paths(False)`` block (:mod:`metaacdc.runtime.fast_paths`)
    is in force.
    """

    def __init__(
        self,
        model: Backbone,
        inner_lr: float,
        first_order: bool,
        adapt: str = "all",
        meta_sgd: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.adapt_scope = adapt
        self.first_order = first_order
        adaptable = model if adapt == "all" else model.head
        wrapper = l2l.algorithms.MetaSGD if meta_sgd else l2l.algorithms.MAML
        self.wrapped = wrapper(adaptable, lr=inner_lr, first_order=first_order)

    def task_learner(self, first_order: bool | None = None, detached: bool = False) -> TaskLearner:
        """A fresh copy for one task.

        ``detached=True`` cuts it from the meta-parameters: adaptation then builds no graph
        back to the stored model (evaluation), and nothing leaks into its ``.grad``. The copy
        takes its layouts (:func:`task_layouts`) from the fast-path switch as it is here.
        """
        order = self.first_order if first_order is None else first_order
        head = self.wrapped.clone()  # MAML and MetaSGD; the order is chosen in adapt()
        if detached:
            l2l.utils.detach_module(head, keep_requires_grad=True)
            if isinstance(head, l2l.algorithms.MetaSGD):  # its step sizes, a plain list
                head.lrs = [lr.detach() for lr in head.lrs]
        features = None if self.adapt_scope == "all" else self.model.features
        return TaskLearner(features, head, order, task_layouts(order))


def adapt_task(learner: TaskLearner, support_x: Tensor, support_y: Tensor, steps: int) -> None:
    """``steps`` inner SGD steps on the support set's cross-entropy, in place."""
    for _ in range(steps):
        learner.adapt(F.cross_entropy(learner.support_logits(support_x), support_y))


def loss_precision(logits: Tensor) -> Tensor:
    """``logits`` in at least float32 for the query loss: autocast's half-precision logits
    upcast, float32 and float64 logits as they are."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        return logits.float()
    return logits


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of ``argmax(logits) == labels``."""
    return (logits.argmax(1) == labels).float().mean().item()
