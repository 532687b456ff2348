"""Which MAML engine runs a meta-update or an evaluation: the learn2learn engine (the
reference, one task after the other) or the batched engine (:mod:`metaacdc.maml.batched`,
the whole meta-batch as one vectorised computation), and what ``auto`` picks."""

from __future__ import annotations

import torch

from metaacdc.config import ENGINES
from metaacdc.errors import ConfigError, check_choice


def choose_engine(requested: str, device: torch.device) -> str:
    """The engine ``requested`` (one of :data:`ENGINES`) means on ``device``.

    ``auto`` is the batched engine on CUDA, where a MAML step is bound by kernel launches
    and the batched engine launches about a quarter of the operators per meta-update
    (``scripts/count_ops.py``), and the learn2learn engine on the CPU, where its fast
    paths make it the faster one (``scripts/bench_maml.py``; docs/speed.md).

    Raises:
        ConfigError: an unknown engine.
    """
    check_choice("engine", requested, ENGINES)
    if requested != "auto":
        return requested
    return "batched" if device.type == "cuda" else "learn2learn"


def check_engine_supports(engine: str, *, processes: int = 1) -> None:
    """Refuse settings the chosen ``engine`` cannot run, in one line.

    Raises:
        ConfigError: the batched engine with CPU evaluation processes (it batches the
            tasks in one process instead of sharing them out one by one).
    """
    if engine == "batched" and processes > 1:
        raise ConfigError(
            f"processes={processes} shares tasks out one by one to CPU processes; the batched "
            "engine batches them in one process: use --engine learn2learn or --processes 1"
        )
