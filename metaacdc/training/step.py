"""One meta-update: adapt to each task of a meta-batch, sum the query losses, one step; with
the learn2learn engine (task after task) or the batched engine (all tasks at once)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metaacdc.data import Episode
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.learner import MetaLearner, adapt_task, loss_precision
from metaacdc.runtime import distributed
from metaacdc.runtime.distributed import World


@dataclass(frozen=True)
class StepStats:
    """Query loss summed over the meta-batch, and query accuracy averaged over it (over the
    whole meta-batch when several processes share it).

    ``sync_s`` is the wall time this process spent summing gradients with the others
    (waiting for slower processes included; 0 for a single process).
    """

    loss: float
    accuracy: float
    sync_s: float = 0.0


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with the global generators (CPU and ``device``) seeded by ``seed``, restoring
    them afterwards; nothing when ``seed`` is None."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


def autocast_for(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` where ``amp``, else nothing."""
    if amp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def meta_train_step(
    learner: MetaLearner,
    tasks: Sequence[Episode],
    optimizer: torch.optim.Optimizer,
    inner_steps: int,
    device: torch.device,
    amp: bool = False,
    *,
    task_seeds: Sequence[int] | None = None,
    world: World | None = None,
) -> StepStats:
    """MAML meta-update on ``tasks``: the meta-gradient of the summed query losses, then one
    optimizer step (design §5: losses summed, one Adam step).

    Each task's query loss is back-propagated as soon as it is computed, so only one task's
    graph (second-order included) is alive at a time; gradients add up in ``.grad``, which
    equals back-propagating the sum. When several processes share the meta-batch, each
    task's gradient is set aside and all are added in meta-batch order after an
    all-gather (:class:`metaacdc.runtime.distributed.TaskGradients`), so the step is bit for bit the
    single-process one (CPU; same number of threads per process).

    Args:
        learner, optimizer: the meta-learner and its optimizer.
        tasks: the meta-batch; with several processes, this process's share of it, tasks
            ``rank, rank + size, ...`` (:meth:`metaacdc.runtime.distributed.World.shard`).
        inner_steps: adaptation steps per task.
        device: where the model is.
        amp: bfloat16 autocast.
        task_seeds: one seed per task (``metaacdc.data.sampler.task_seed``): the model's
            randomness (atom-drop) during that task is drawn from it, so it does not depend
            on which process trains the task; the global generators are restored after each
            task. ``None``: the global generators are used as they are.
        world: the processes sharing the meta-batch (default
            :func:`metaacdc.runtime.distributed.current`); gradients and statistics are summed over
            them before the step, which every process takes.

    Returns:
        The loss and accuracy over the whole meta-batch (all processes).
    """
    world = distributed.current() if world is None else world
    if task_seeds is not None and len(task_seeds) != len(tasks):
        raise ValueError(f"{len(task_seeds)} task seeds for {len(tasks)} tasks")
    seeds: Sequence[int | None] = [None] * len(tasks) if task_seeds is None else task_seeds
    optimizer.zero_grad(set_to_none=True)
    shared = distributed.TaskGradients(list(learner.parameters()), 3) if world.distributed else None
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    count = 0
    autocast = autocast_for(device, amp)
    for task, seed in zip(tasks, seeds):
        support_x, support_y, query_x, query_y = (t.to(device, non_blocking=True) for t in task[:4])
        with _seeded(seed, device):
            with autocast:
                task_learner = learner.task_learner()
                adapt_task(task_learner, support_x, support_y, inner_steps)
                logits = task_learner(query_x)
                loss = F.cross_entropy(loss_precision(logits), query_y)
            loss.backward()
        hits = (logits.detach().argmax(1) == query_y).sum()
        if shared is not None:
            shared.take(
                torch.stack([loss.detach(), hits.float(), hits.new_tensor(len(query_y)).float()])
            )
        else:
            total_loss += loss.detach()
            correct += hits
            count += len(query_y)
    sync_s = 0.0
    if shared is not None:
        started = time.perf_counter()
        total_loss, correct, summed_count = shared.sum(world)
        count = int(summed_count)  # reads the sum: waits for the gather to finish
        sync_s = time.perf_counter() - started
    optimizer.step()
    # one synchronisation per meta-update, not per task
    return StepStats(loss=float(total_loss), accuracy=float(correct) / count, sync_s=sync_s)


def batched_train_step(
    engine: BatchedMAML,
    tasks: Sequence[Episode],
    optimizer: torch.optim.Optimizer,
    inner_steps: int,
    *,
    amp: bool = False,
    task_seeds: Sequence[int] | None = None,
    world: World | None = None,
) -> StepStats:
    """:func:`meta_train_step` with the batched engine: this process's tasks adapted
    together as one vectorised computation (:meth:`BatchedMAML.meta_gradient`), then one
    optimizer step. The same arguments (the device is the model's), the same result up to
    float rounding.

    With several processes each batches its own share; the shares' gradients are then
    summed in rank order (:class:`metaacdc.runtime.distributed.TaskGradients` with one row
    per process), so the step does not depend on which process finishes first.
    """
    world = distributed.current() if world is None else world
    device = next(engine.learner.parameters()).device
    optimizer.zero_grad(set_to_none=True)
    autocast = autocast_for(device, amp)
    with autocast:
        result = engine.meta_gradient(tasks, inner_steps, task_seeds)
    queries = result.queries * len(result.hits)
    totals = torch.stack(
        [result.loss.float(), result.hits.sum().float(), result.loss.new_tensor(queries).float()]
    )
    sync_s = 0.0
    if world.distributed:
        shared = distributed.TaskGradients(list(engine.learner.parameters()), 3)
        shared.take(totals)
        started = time.perf_counter()
        totals = shared.sum(world)
        sync_s = time.perf_counter() - started
    optimizer.step()
    loss, correct, count = totals.tolist()  # one synchronisation per meta-update
    return StepStats(loss=loss, accuracy=correct / count, sync_s=sync_s)
