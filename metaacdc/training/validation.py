"""Validation during training: accuracy over a fixed list of validation tasks."""

from __future__ import annotations

import numpy as np
import torch

from metaacdc.data import EpisodeSampler
from metaacdc.evaluation import confidence_95
from metaacdc.maml.learner import MetaLearner, adapt_task


def validation_accuracies(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    tasks: int,
    inner_steps: int,
    device: torch.device,
) -> np.ndarray:
    """Query accuracy of each of the first ``tasks`` episodes of ``sampler``, adapting
    first-order on a detached copy (no graph back to, and no gradient into, the model)."""
    was_training = learner.training
    learner.eval()
    accuracies = np.empty(tasks)
    try:
        for i in range(tasks):
            support_x, support_y, query_x, query_y = (t.to(device) for t in sampler.episode(i)[:4])
            task_learner = learner.task_learner(first_order=True, detached=True)
            adapt_task(task_learner, support_x, support_y, inner_steps)
            with torch.no_grad():
                predicted = task_learner(query_x).argmax(1)
            accuracies[i] = (predicted == query_y).float().mean().item()
    finally:
        learner.train(was_training)
    return accuracies


def mean_and_ci95(accuracies: np.ndarray) -> tuple[float, float]:
    """Mean and 95% interval half-width, as the evaluator reports them."""
    return float(accuracies.mean()), confidence_95(accuracies)
