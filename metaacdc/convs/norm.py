"""The batch norm every backbone (and every kind's extra module) uses."""

from __future__ import annotations

from torch import nn


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BN that always normalises with the statistics of the current batch (no running stats),
    in training and evaluation, as MAML and CloserLook do (design §4). Support and query
    batches are therefore normalised separately. Weight 1, bias 0."""
    return nn.BatchNorm2d(channels, track_running_stats=False)
