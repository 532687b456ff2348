"""The batched MAML engine: a whole meta-batch as one vectorised computation (design §2).

The learn2learn engine (:func:`metaacdc.training.step.meta_train_step`) adapts the tasks of
a meta-batch one after the other, each a few small convolutions per layer. This engine runs
them together: the adapted parameters carry a leading task dimension, the model's forward is
``torch.func.functional_call`` under ``torch.func.vmap`` (one batched convolution, batch norm,
... per layer for all tasks), and the inner gradients are ordinary autograd gradients of the
summed per-task support losses (each task's parameters receive exactly its own loss's
gradient), taken with ``create_graph=True`` for second order as learn2learn takes them, so
the outer backward differentiates through them. Gradients are taken by autograd on the
batched operators rather than by ``torch.func.grad`` inside ``vmap``: the backward then runs
each batched operator's own backward kernel instead of a vmapped backward, which is what
keeps the operator count low.

What it reproduces of the learn2learn engine, up to float rounding:

* MAML (``p + (-lr) * g``) and Meta-SGD (``p - lr_p * g``, the wrapper's learned per-parameter
  step sizes), first order (inner gradients detached) and second order;
* ``adapt="all"`` and ``"head"`` (ANIL: the features are meta-learned, not adapted; they run
  unbatched in their parameters and batched in their input);
* every conv kind: a tensor registered in several modules (an ACDC coefficient tensor
  shared by a scope, an anchored kernel) stays one tensor per task
  (``functional_call(..., tie_weights=True)``), so its inner update is its summed gradient,
  applied once;
* batch norm with batch statistics per task and per pass (support and query apart), run
  with the tasks beside the channels (:mod:`metaacdc.maml.task_rules`): one batch-norm call
  for all tasks, each task's channels normalised with its own statistics;
* atom-drop: each task's masks are drawn beforehand from its task seed in the order the
  task itself draws them (:mod:`metaacdc.maml.atom_drop`), so they are the learn2learn
  engine's masks, whatever tasks share the batch.

Meta-SGD updates a shared tensor once and every holder reads it, as the learn2learn
engine's :func:`~metaacdc.maml.learner.meta_sgd_step` does (learn2learn's own
``meta_sgd_update`` keeps no memo and unties shared tensors after one step).

A meta-update makes no host synchronisation (no ``.item()``, no branch on tensor values): the
loss and the per-task hits come back as tensors. Under autocast (``amp``) the convolutions
take autocast's lower precision as they do outside vmap (vmap's batched convolution skips
autocast's casts, so :mod:`metaacdc.maml.task_rules` makes them) and the query loss is
computed in float32, as the learn2learn engine computes it. Not supported: batch norm with
running statistics (refused), tasks of different shapes in one batch (refused, never
padded).

:meth:`BatchedMAML.adapted_logits` is the evaluation path: many test tasks adapted at once,
first order and detached, as :meth:`metaacdc.maml.adaptation.Learner.adapt` adapts one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaacdc.acdc.layer import ACDCConv2d
from metaacdc.data import Episode
from metaacdc.errors import ConfigError, check_positive_int
from metaacdc.maml.atom_drop import MaskDraw, draw_masks, plan_draws
from metaacdc.maml.graphed_adaptation import AdaptationGraphs
from metaacdc.maml.l2l import learn2learn as l2l
from metaacdc.maml.learner import MetaLearner, loss_precision
from metaacdc.maml.modes import evaluation_mode
from metaacdc.maml.task_batch import TaskBatch, checked_batch, stack_tasks
from metaacdc.maml.task_forward import Params, tasks_forward
from metaacdc.runtime.cuda_graphs import Capture


@dataclass(frozen=True)
class BatchedStep:
    """What one batched meta-gradient gives back, as tensors (no host synchronisation).

    Attributes:
        loss: ``()`` the query losses summed over the tasks (detached).
        task_losses: ``(T,)`` each task's query loss (detached).
        hits: ``(T,)`` int64 correctly classified queries per task.
        queries: queries per task.
    """

    loss: Tensor
    task_losses: Tensor
    hits: Tensor
    queries: int


def _check_supported(learner: MetaLearner) -> None:
    for name, module in learner.model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            raise ConfigError(
                f"{name or 'the model'} is a batch norm with running statistics; the batched "
                "engine needs batch statistics only (track_running_stats=False, as every "
                "backbone here builds)"
            )


class BatchedMAML:
    """The batched engine over a :class:`~metaacdc.maml.learner.MetaLearner`.

    Args:
        learner: the meta-learner; its settings (first or second order, ``adapt`` scope,
            MAML or Meta-SGD, inner step size) are the engine's. It reads them at each
            call, so a learner changed in between (modes, weights) is used as it is then.
        cuda_graphs: replay :meth:`adapted_logits` as CUDA graphs, one per call shape seen
            twice (:mod:`metaacdc.maml.graphed_adaptation`); the model must be on CUDA.
        capture: how to capture (tests pass a CPU
            :class:`~metaacdc.runtime.cuda_graphs.Rehearsal`).

    Raises:
        ConfigError: a model whose batch norms keep running statistics.
    """

    def __init__(
        self, learner: MetaLearner, *, cuda_graphs: bool = False, capture: Capture | None = None
    ) -> None:
        _check_supported(learner)
        self.learner = learner
        self._plans: dict[tuple[object, ...], tuple[MaskDraw, ...]] = {}
        self._graphs = AdaptationGraphs(
            self._eager_logits,
            self.draws_anything,
            self._adaptation_setting,
            enabled=cuda_graphs,
            capture=capture,
        )

    @property
    def captures(self) -> bool:
        """Whether :meth:`adapted_logits` is replayed from CUDA graphs (when asked, and
        until a capture is refused)."""
        return self._graphs.enabled and self._graphs.off_because is None

    # ------------------------------------------------------------------ parameters

    @property
    def _adapted(self) -> nn.Module:
        """The module whose parameters a task adapts (the model, or its head)."""
        module: nn.Module = self.learner.wrapped.module
        return module

    @property
    def _features(self) -> nn.Module | None:
        """The shared feature extractor run before the adapted head (``adapt="head"``)."""
        return None if self.learner.adapt_scope == "all" else self.learner.model.features

    def _step_sizes(self) -> list[Tensor] | None:
        """Meta-SGD's per-parameter step sizes, in parameter order; None for MAML."""
        wrapped = self.learner.wrapped
        if not isinstance(wrapped, l2l.algorithms.MetaSGD):
            return None
        return list(wrapped.lrs)

    def _inner_lr(self) -> float:
        return float(self.learner.wrapped.lr)

    def _adaptation_setting(self) -> tuple[object, ...]:
        """What besides tensors an adaptation reads: the modes, scope and step size."""
        return (
            tuple(module.training for module in self.learner.modules()),
            self.learner.adapt_scope,
            self._inner_lr(),
        )

    # --------------------------------------------------------------------- forward

    def _plan(self, module: nn.Module, example: Tensor) -> tuple[MaskDraw, ...]:
        """The atom-drop draws of one forward of ``module`` on one task's ``example``
        batch, cached by module, shape and the ACDC layers' modes and rates."""
        layers = tuple(
            (id(layer), layer.atom_drop)
            for layer in module.modules()
            if isinstance(layer, ACDCConv2d) and layer.training and layer.atom_drop > 0
        )
        if not layers:
            return ()
        key = (id(module), tuple(example.shape), example.dtype, example.device, layers)
        if key not in self._plans:
            self._plans[key] = plan_draws(module, example)
        return self._plans[key]

    def _masks(
        self,
        module: nn.Module,
        support: Tensor,
        query: Tensor | None,
        steps: int,
        seeds: Sequence[int | None],
    ) -> list[list[Tensor]]:
        """Per forward (``steps`` support passes, then the query pass when ``query`` is
        given), the ``(T, *shape)`` masks of each draw, drawn in the tasks' own order."""
        support_plan = self._plan(module, support[0])
        query_plan = () if query is None else self._plan(module, query[0])
        plans = [support_plan] * steps + ([query_plan] if query is not None else [])
        flat = [draw for plan in plans for draw in plan]
        masks = draw_masks(flat, seeds, support.device)
        per_forward, start = [], 0
        for plan in plans:
            per_forward.append(masks[start : start + len(plan)])
            start += len(plan)
        return per_forward

    def _features_of(self, x: Tensor, masks: Sequence[Tensor]) -> Tensor:
        features = self._features
        assert features is not None
        return tasks_forward(features, None, x, masks)

    def _logits(
        self,
        params: Params,
        x: Tensor,
        masks: Sequence[Tensor],
        features: Tensor | None,
        ways: int | None = None,
    ) -> Tensor:
        """``(T, N, outputs)`` logits of the tasks' models ``params`` on ``x`` ``(T, N, ...)``
        (the first ``ways`` outputs where given); with ``adapt="head"``, ``features``
        (``(T, N, D)``) when already computed."""
        if self._features is None:
            logits = tasks_forward(self._adapted, params, x, masks)
        else:
            if features is None:
                features = self._features_of(x, masks)
            logits = tasks_forward(self._adapted, params, features, [])
        return logits if ways is None else logits[..., :ways]

    # ------------------------------------------------------------------ inner loop

    def _adapt(
        self,
        params: Params,
        support_x: Tensor,
        support_y: Tensor,
        steps: int,
        masks: Sequence[Sequence[Tensor]],
        *,
        create_graph: bool,
        detached: bool,
        lr: float | None = None,
        ways: int | None = None,
    ) -> Params:
        """``steps`` inner SGD steps of every task on its support set (step size ``lr``,
        default the learner's; the first ``ways`` logits)."""
        step_sizes = self._step_sizes()
        if step_sizes is None and lr is None:
            lr = self._inner_lr()
        features = None
        if self._features is not None and steps > 0 and not any(masks[:steps]):
            # the features do not change within a task, nor (without atom-drop) between
            # its passes: computed once; a first-order inner loop needs no graph of them
            with torch.no_grad() if not create_graph else contextlib.nullcontext():
                features = self._features_of(support_x, [])
        for step in range(steps):
            logits = self._logits(params, support_x, masks[step], features, ways)
            loss = _summed_task_losses(logits, support_y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            with torch.no_grad() if detached else contextlib.nullcontext():
                if step_sizes is None:
                    assert lr is not None
                    alpha = -lr  # learn2learn's update is p + (-lr * g)
                    updated = [p.add(g, alpha=alpha) for p, g in zip(params.values(), grads)]
                else:
                    updated = [
                        torch.addcmul(p, s, g, value=-1)
                        for p, s, g in zip(params.values(), step_sizes, grads)
                    ]
            if detached:
                updated = [p.requires_grad_() for p in updated]
            params = dict(zip(params, updated))
        return params

    def _detached_adaptation(
        self,
        batch: TaskBatch,
        steps: int,
        seeds: Sequence[int | None],
        *,
        lr: float | None = None,
        ways: int | None = None,
    ) -> Params:
        """Every task's parameters after ``steps`` first-order inner steps from the
        meta-parameters, detached from them (evaluation's adaptation)."""
        module = self._features if self._features is not None else self._adapted
        masks = self._masks(module, batch.support_x, None, steps, seeds)
        return self._adapt(
            self._task_params(batch.tasks, detached=True),
            batch.support_x,
            batch.support_y,
            steps,
            masks,
            create_graph=False,
            detached=True,
            lr=lr,
            ways=ways,
        )

    def _task_params(self, tasks: int, detached: bool) -> Params:
        """The meta-parameters expanded along a task dimension (views, no copies)."""
        params = {}
        for name, param in self._adapted.named_parameters():
            start = param.detach().requires_grad_() if detached else param
            params[name] = start.expand(tasks, *param.shape)
        return params

    # ---------------------------------------------------------------------- public

    def meta_gradient(
        self,
        tasks: Sequence[Episode] | TaskBatch,
        inner_steps: int,
        task_seeds: Sequence[int | None] | None = None,
    ) -> BatchedStep:
        """Adapt to every task, sum the query losses and back-propagate the sum: the
        meta-gradient accumulates into the meta-learner's ``.grad`` (as ``loss.backward()``
        does; zero them before, as ``optimizer.zero_grad()`` does in the training step).

        This is what :func:`metaacdc.training.step.meta_train_step` does before its
        optimizer step, for the whole meta-batch at once. Called under autocast, the
        forward passes run in autocast's precision (see the module's notes).

        Args:
            tasks: the meta-batch, equally shaped episodes (or a :class:`TaskBatch`), on any
                device (moved to the model's).
            inner_steps: inner SGD steps per task.
            task_seeds: one seed per task: each task's atom-drop masks are drawn from it,
                as the learn2learn engine draws them under that seed. ``None``: drawn from
                the global generator, task after task (also as that engine does).

        Returns:
            The summed query loss, each task's loss and hits (tensors on the model's
            device).

        Raises:
            ConfigError: tasks of different shapes, a wrong number of seeds, a bad
                ``inner_steps``.
        """
        check_positive_int("inner_steps", inner_steps, minimum=0)
        batch = self.batch(tasks)
        masks = self.step_masks(batch, inner_steps, task_seeds)
        return self.masked_meta_gradient(batch, inner_steps, masks)

    def step_masks(
        self,
        batch: TaskBatch,
        inner_steps: int,
        task_seeds: Sequence[int | None] | None = None,
    ) -> list[list[Tensor]]:
        """The atom-drop masks of a :meth:`meta_gradient` on ``batch``: per forward (the
        inner steps' support passes, then the query pass) one ``(T, *shape)`` mask per
        draw, drawn from ``task_seeds`` (see :meth:`meta_gradient`). Drawn apart from the
        computation so that a captured step (:mod:`metaacdc.runtime.cuda_graphs`) takes them
        as inputs."""
        module = self._features if self._features is not None else self._adapted
        seeds = self._seeds(task_seeds, batch.tasks)
        return self._masks(module, batch.support_x, batch.query_x, inner_steps, seeds)

    def masked_meta_gradient(
        self, batch: TaskBatch, inner_steps: int, masks: Sequence[Sequence[Tensor]]
    ) -> BatchedStep:
        """:meth:`meta_gradient` with the masks of :meth:`step_masks` given: no host
        synchronisation and no random draw, so it can be captured in a CUDA graph."""
        assert batch.query_y is not None
        first_order = bool(self.learner.first_order)
        params = self._adapt(
            self._task_params(batch.tasks, detached=False),
            batch.support_x,
            batch.support_y,
            inner_steps,
            masks,
            create_graph=not first_order,
            detached=False,
        )
        logits = self._logits(params, batch.query_x, masks[inner_steps], None)
        task_losses = _task_losses(loss_precision(logits), batch.query_y)
        loss = task_losses.sum()
        loss.backward()
        hits = (logits.detach().argmax(-1) == batch.query_y).sum(-1)
        return BatchedStep(loss.detach(), task_losses.detach(), hits, int(batch.query_y.shape[1]))

    def adapted_logits(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        steps: int,
        *,
        lr: float | None = None,
        ways: int | None = None,
        task_seeds: Sequence[int | None] | None = None,
    ) -> Tensor:
        """Adapt to many tasks at once, first order and detached, and classify their
        queries: per task what :meth:`metaacdc.maml.adaptation.Learner.adapt` followed by
        the adapted model's query pass gives. Nothing is written into the meta-learner.

        Adaptation runs in the learner's current mode (eval mode: no atom-drop; in training
        mode the masks come from ``task_seeds`` or the global generator), the query pass in
        eval mode, as the adapted model ``Learner.adapt`` returns runs it.

        Args:
            support_x: ``(T, S, C, H, W)`` float images; ``support_y``: ``(T, S)`` labels in
                ``0..ways-1``.
            query_x: ``(T, Q, C, H, W)`` float images.
            steps: inner steps (0 allowed).
            lr: inner step size; default the learner's. Not accepted for Meta-SGD.
            ways: classes per task; default the head's outputs (the first ``ways`` logits
                are used, in adaptation and in the result).
            task_seeds: see :meth:`meta_gradient`.

        Returns:
            ``(T, Q, ways)`` query logits (no gradient).

        Raises:
            ConfigError: inputs of mismatched shapes, ``lr`` with Meta-SGD, bad ``steps``
                or ``ways``.
        """
        check_positive_int("steps", steps, minimum=0)
        head_ways = int(self.learner.model.head.out_features)
        ways = head_ways if ways is None else ways
        check_positive_int("ways", ways, minimum=2)
        if ways > head_ways:
            raise ConfigError(f"ways={ways} is more than the head's {head_ways} outputs")
        if lr is not None and self._step_sizes() is not None:
            raise ConfigError(
                "lr cannot be set for a Meta-SGD run: its step sizes are learned per "
                "parameter; leave lr=None"
            )
        batch = checked_batch(support_x, support_y, query_x)
        seeds = self._seeds(task_seeds, batch.tasks)
        graphed = self._graphs.logits(batch, steps, seeds, lr, ways)
        if graphed is not None:
            return graphed
        return self._eager_logits(batch, steps, seeds, lr, ways)

    def _eager_logits(
        self,
        batch: TaskBatch,
        steps: int,
        seeds: Sequence[int | None],
        lr: float | None,
        ways: int | None,
    ) -> Tensor:
        with torch.enable_grad():
            params = self._detached_adaptation(batch, steps, seeds, lr=lr, ways=ways)
        with torch.no_grad(), evaluation_mode(self.learner):
            return self._logits(params, batch.query_x, [], None, ways)

    def draws_anything(self, example: Tensor) -> bool:
        """Whether an adaptation on images like ``example`` ``(N, C, H, W)`` draws atom-drop
        masks (ACDC layers with atom-drop in training mode)."""
        module = self._features if self._features is not None else self._adapted
        return bool(self._plan(module, example))

    def accuracies(
        self,
        tasks: Sequence[Episode] | TaskBatch,
        steps: int,
        *,
        lr: float | None = None,
        ways: int | None = None,
        task_seeds: Sequence[int | None] | None = None,
    ) -> Tensor:
        """``(T,)`` float64 query accuracy of each task after :meth:`adapted_logits`."""
        batch = self.batch(tasks)
        assert batch.query_y is not None
        logits = self.adapted_logits(
            batch.support_x,
            batch.support_y,
            batch.query_x,
            steps,
            lr=lr,
            ways=ways,
            task_seeds=task_seeds,
        )
        return (logits.argmax(-1) == batch.query_y).double().mean(-1)

    def adaptation_bytes(self, support_x: Tensor, support_y: Tensor) -> int:
        """Bytes autograd keeps for one inner step of one task on ``support_x``
        ``(S, C, H, W)``: the activation memory each task of an :meth:`adapted_logits`
        call adds (what sizes a batch of tasks to the free memory)."""
        saved = 0

        def count(tensor: Tensor) -> Tensor:
            nonlocal saved
            saved += tensor.numel() * tensor.element_size()
            return tensor

        batch = checked_batch(support_x[None], support_y[None], support_x[None, :1])
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(count, _unpacked):
            self._detached_adaptation(batch, 1, [None])
        return saved

    # ------------------------------------------------------------------ validation

    def _device(self) -> torch.device:
        return next(self.learner.parameters()).device

    def batch(self, tasks: Sequence[Episode] | TaskBatch) -> TaskBatch:
        """``tasks`` stacked on the model's device (a :class:`TaskBatch` is checked as is).

        Raises:
            ConfigError: no task, or tasks of different shapes.
        """
        if isinstance(tasks, TaskBatch):
            checked_batch(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)
            return tasks
        return stack_tasks(tasks, self._device())

    @staticmethod
    def _seeds(seeds: Sequence[int | None] | None, tasks: int) -> list[int | None]:
        if seeds is None:
            return [None] * tasks
        if len(seeds) != tasks:
            raise ConfigError(f"{len(seeds)} task seeds for {tasks} tasks; give one per task")
        return list(seeds)


# ------------------------------------------------------------------------ helpers


def _unpacked(tensor: Tensor) -> Tensor:
    return tensor


def _summed_task_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum over tasks of each task's mean cross-entropy: its gradient with respect to one
    task's parameters is that task's own loss gradient."""
    tasks, count, outputs = logits.shape
    total = F.cross_entropy(logits.reshape(tasks * count, outputs), labels.reshape(-1))
    return total * tasks


def _task_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """``(T,)`` mean cross-entropy of each task."""
    tasks, count, outputs = logits.shape
    losses = F.cross_entropy(
        logits.reshape(tasks * count, outputs), labels.reshape(-1), reduction="none"
    )
    return losses.view(tasks, count).mean(-1)
