"""A process of the jobs that tests/runtime/test_distributed.py launches with torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.torchrun_worker
        MODE ...

``commands COMMANDS REPORT``: joins one process group, then runs each ``metaacdc`` command
line of the JSON file COMMANDS in turn, as ``torchrun -m metaacdc`` runs one (the command
uses the group it finds). After each ``train`` it compares the parameters every rank ended
with; rank 0 writes the exit codes and those differences to the JSON file REPORT.

``raise``: rank 1 raises while rank 0 waits to sum the gradients.
``stall``: rank 1 never comes to sum them; rank 0 must give up after the timeout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from metaacdc.runtime import distributed

FAILURE = "rank 1 fails on purpose"


def commands(listing: Path, report: Path) -> None:
    import metaacdc.training.trainer as trainer_module
    from metaacdc.cli import main

    learners: list[Any] = []
    step, batched_step = trainer_module.meta_train_step, trainer_module.batched_train_step

    def recording(learner: Any, *args: Any, **kwargs: Any) -> Any:
        learners.append(learner)
        return step(learner, *args, **kwargs)

    def recording_batched(engine: Any, *args: Any, **kwargs: Any) -> Any:
        learners.append(engine.learner)
        return batched_step(engine, *args, **kwargs)

    trainer_module.meta_train_step = recording  # type: ignore[assignment]
    trainer_module.batched_train_step = recording_batched  # type: ignore[assignment]
    results = []
    with distributed.join("cpu") as world:
        for argv in json.loads(listing.read_text()):
            learners.clear()
            code = main(argv)
            outcome: dict[str, Any] = {"argv": argv, "code": code}
            if argv[0] == "train":
                mine = torch.cat([p.detach().reshape(-1) for p in learners[-1].parameters()])
                everyone = [torch.empty_like(mine) for _ in range(world.size)]
                dist.all_gather(everyone, mine)
                outcome["rank_difference"] = max(
                    (other - mine).abs().max().item() for other in everyone
                )
            results.append(outcome)
        if world.is_main:
            report.write_text(json.dumps(results))


def failing(mode: str) -> None:
    with distributed.join("cpu") as world:
        parameter = torch.nn.Parameter(torch.zeros(3))
        parameter.grad = torch.ones(3)
        if world.rank == 1:
            if mode == "raise":
                raise RuntimeError(FAILURE)
            time.sleep(600)
        gradients = distributed.TaskGradients([parameter], stats=1)
        gradients.take(torch.zeros(1))
        gradients.sum(world)


if __name__ == "__main__":
    if sys.argv[1] == "commands":
        commands(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        failing(sys.argv[1])
