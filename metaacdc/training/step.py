"""One meta-update: adapt to each task of a meta-batch, sum the query losses, one step."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metaacdc.data import Episode
from metaacdc.maml.learner import MetaLearner, adapt_task


@dataclass(frozen=True)
class StepStats:
    """Query loss summed over the meta-batch, and query accuracy averaged over it."""

    loss: float
    accuracy: float


def meta_train_step(
    learner: MetaLearner,
    tasks: Sequence[Episode],
    optimizer: torch.optim.Optimizer,
    inner_steps: int,
    device: torch.device,
    amp: bool = False,
) -> StepStats:
    """MAML meta-update on ``tasks``: the meta-gradient of the summed query losses, then one
    optimizer step (design §5: losses summed, one Adam step).

    Each task's query loss is back-propagated as soon as it is computed, so only one task's
    graph (second-order included) is alive at a time; gradients add up in ``.grad``, which
    equals back-propagating the sum.
    """
    optimizer.zero_grad(set_to_none=True)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    count = 0
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    )
    for task in tasks:
        support_x, support_y, query_x, query_y = (t.to(device, non_blocking=True) for t in task[:4])
        with autocast:
            task_learner = learner.task_learner()
            adapt_task(task_learner, support_x, support_y, inner_steps)
            logits = task_learner(query_x)
            loss = F.cross_entropy(logits.float(), query_y)
        loss.backward()
        total_loss += loss.detach()
        correct += (logits.detach().argmax(1) == query_y).sum()
        count += len(query_y)
    optimizer.step()
    # one synchronisation per meta-update, not per task
    return StepStats(loss=float(total_loss), accuracy=float(correct) / count)
