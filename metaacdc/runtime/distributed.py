"""Several processes with ``torch.distributed`` (launched by ``torchrun``): which process
this is, which tasks it takes, and the few collectives training and evaluation need.

Only the tasks are split: the tasks of a meta-batch and the evaluation tasks go to the
processes in turn (task ``i`` to rank ``i % size``), each task is still the episode a single
process would draw for its index, and the meta-gradient is the sum over all tasks, as in one
process. Without a process group every function here acts for a world of one process: no
group is created and nothing is communicated, so a plain run is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from metaacdc.errors import ConfigError

#: Seconds a collective may wait for the other processes before the job fails (default 30
#: min: rank 0 may prepare a dataset or write a checkpoint while the others wait).
TIMEOUT_VARIABLE = "METAACDC_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class World:
    """This process's place in the job.

    Attributes:
        rank: global index of this process, ``0 .. size-1``; rank 0 writes the run folder.
        size: number of processes.
        local_rank: index on this machine (``LOCAL_RANK``); picks the GPU.
        device: where the tensors of collectives live (``cuda:local_rank`` with NCCL).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    def shard(self, count: int) -> range:
        """This process's items among ``0 .. count-1``: ``rank, rank + size, ...``
        (shards differ in length by at most one)."""
        return range(self.rank, count, self.size)

    def device_for(self, device: torch.device) -> torch.device:
        """``device``, with CUDA replaced by this process's own GPU when distributed."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = World()
"""A world of one process (no ``torch.distributed``)."""


def current() -> World:
    """The world of the default process group, or :data:`SINGLE` when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    nccl = dist.get_backend() == "nccl"
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=local_rank,
        device=torch.device("cuda", local_rank) if nccl else torch.device("cpu"),
    )


def timeout() -> timedelta:
    """How long a collective waits for the others: ``$METAACDC_DIST_TIMEOUT`` seconds, else
    30 minutes."""
    text = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r} is not valid; expected seconds > 0")
    return timedelta(seconds=seconds)


@contextmanager
def join(device: str = "auto") -> Iterator[World]:
    """Take part in the ``torchrun`` job this process belongs to, for the ``with`` block.

    Launched by ``torchrun`` with more than one process (``WORLD_SIZE`` > 1), it creates the
    default process group (NCCL when ``device`` means CUDA, each process on the GPU of its
    ``LOCAL_RANK``; gloo otherwise) with :func:`timeout`, and destroys it at the end. A group
    the caller created already is used as it is; without ``torchrun`` it yields
    :data:`SINGLE` and creates nothing.

    An exception leaves the group in place: the process is about to exit, and the other
    processes' collectives then fail (gloo: at once, the connection closes; NCCL: after the
    timeout) instead of waiting for this one; ``torchrun`` also stops them. Uncaught
    exceptions are printed with a ``[rankN]:`` prefix by torch.

    Raises:
        ConfigError: ``device`` asks for CUDA where there is none, or names one GPU
            (``cuda:N``) for a job of several processes; more processes on this machine than
            GPUs; an invalid :data:`TIMEOUT_VARIABLE`.
    """
    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        yield SINGLE
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} asked for, but CUDA is not available here")
        if device not in ("auto", "cuda"):
            raise ConfigError(
                f"--device {device} names one GPU, but each process of a torchrun job uses "
                "the GPU of its LOCAL_RANK; use --device cuda or auto"
            )
        local_rank, gpus = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if local_rank >= gpus:
            raise ConfigError(
                f"process {local_rank} of this machine has no GPU of its own ({gpus} here); "
                f"use torchrun --nproc_per_node {gpus} or fewer"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout())
    yield current()
    dist.destroy_process_group()


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. prepares a dataset cache), then the others do
    (e.g. open that cache), so no process reads what another is still writing."""
    if world.distributed and not world.is_main:
        dist.barrier()
    yield
    if world.distributed and world.is_main:
        dist.barrier()


def barrier(world: World) -> None:
    """Wait until every process gets here (nothing to wait for in a world of one)."""
    if world.distributed:
        dist.barrier()


class TaskGradients:
    """The meta-gradient of a meta-batch shared by several processes, summed as one process
    sums it.

    After each of its tasks' backward pass a process calls :meth:`take`, which moves the
    gradients (and the task's statistics) into a row of its own; :meth:`sum` then gathers
    every process's rows (an all-gather, not an all-reduce) and adds them one task after the
    other, ``((g0 + g1) + g2) + g3``, the order in which a single process accumulates
    ``.grad``. The sum, hence the optimizer step, is then bit for bit the single-process
    one whatever the number of processes. An all-reduce adds in another order, and that
    rounding does not stay small: Adam turns gradients that are zero in exact arithmetic (a
    conv bias before batch norm) into full steps of the rounding's sign, and a max-pool
    near-tie can flip, so runs on different numbers of processes drift apart visibly within
    a few meta-updates. The price is traffic: each process receives the other processes'
    task gradients, ``(tasks - own tasks) x parameters`` floats per meta-update, about twice
    what an all-reduce moves for a meta-batch of 4 on 2 to 4 processes.

    Args:
        parameters: the meta-parameters, in the same order on every process.
        stats: how many statistics each task adds (``extra`` of :meth:`take`).
    """

    def __init__(self, parameters: Sequence[torch.nn.Parameter], stats: int) -> None:
        self.parameters = list(parameters)
        self.sizes = [p.numel() for p in self.parameters] + [len(self.parameters), stats]
        self.rows: list[torch.Tensor] = []

    def take(self, extra: torch.Tensor) -> None:
        """Move the current ``.grad`` of every parameter (zeros, flagged, where there is
        none) and the task's 1-D statistics ``extra`` into a new row; ``.grad`` is cleared
        for the next task."""
        reference = self.parameters[0]
        flags = [p.grad is not None for p in self.parameters]
        pieces = [
            (torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1).to(reference.dtype)
            for p in self.parameters
        ]
        flag_tensor = torch.tensor(flags, dtype=reference.dtype, device=reference.device)
        self.rows.append(torch.cat([*pieces, flag_tensor, extra.to(reference)]))
        for parameter in self.parameters:
            parameter.grad = None

    def sum(self, world: World) -> torch.Tensor:
        """Sum the rows of all processes in meta-batch order and set each ``.grad`` to its
        sum; a parameter without a gradient in every task keeps ``grad = None``, as in a
        single process (Adam then skips it). This process's rows must be tasks ``rank,
        rank + size, ...`` of the meta-batch (:meth:`World.shard`).

        Returns:
            The statistics, summed in the same order.
        """
        reference = self.parameters[0]
        counts = torch.zeros(world.size, dtype=torch.int64, device=world.device)
        mine = torch.tensor([len(self.rows)], dtype=torch.int64, device=world.device)
        dist.all_gather_into_tensor(counts, mine)
        rows = torch.zeros(
            int(counts.max()), sum(self.sizes), dtype=reference.dtype, device=reference.device
        )
        for k, row in enumerate(self.rows):
            rows[k] = row
        gathered = [torch.empty_like(rows) for _ in range(world.size)]
        dist.all_gather(gathered, rows)
        tasks = [gathered[i % world.size][i // world.size] for i in range(int(counts.sum()))]
        total = tasks[0].clone()
        for row in tasks[1:]:
            total += row
        *grads, flags, extra = torch.split(total, self.sizes)
        for parameter, grad, flag in zip(self.parameters, grads, flags.tolist()):
            parameter.grad = grad.view_as(parameter).to(parameter.dtype) if flag > 0 else None
        self.rows.clear()
        return extra


def gather_strided(values: np.ndarray, total: int, world: World) -> np.ndarray:
    """All ``total`` values in item order, from each process's values of its
    :meth:`World.shard` of ``total`` items (``values[k]`` is item ``rank + k * size``)."""
    if not world.distributed:
        return values
    width = -(-total // world.size)
    padded = torch.zeros(width, dtype=torch.float64, device=world.device)
    padded[: len(values)] = torch.as_tensor(values, dtype=torch.float64)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    ordered = np.empty(total, dtype=np.float64)
    for rank, part in enumerate(parts):
        ordered[rank :: world.size] = part[: len(range(rank, total, world.size))].cpu().numpy()
    return ordered


__all__ = [
    "SINGLE",
    "TIMEOUT_VARIABLE",
    "TaskGradients",
    "World",
    "barrier",
    "current",
    "gather_strided",
    "join",
    "main_first",
    "timeout",
]
