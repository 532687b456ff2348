"""Operators per meta-update: the learn2learn engine against the batched engine.

Counts the ATen operator calls that launch work (views and other relabellings of memory left
out, as :func:`metaacdc.reports.estimate.task_ops` counts them) in one meta-gradient of a
meta-batch, each engine on the same model, tasks and seeds, and prints the totals, their
ratio and, with ``--top N``, the operators that differ most. The optimizer step is not
counted (the same for both engines). The learn2learn engine is counted with the CPU fast
paths on and off (:mod:`metaacdc.runtime.fast_paths`; a GPU runs it as "off").

The row "batched, captured" is what a meta-update launches from Python when its whole step
is replayed from a CUDA graph (``--cuda-graphs``, :mod:`metaacdc.training.graphed_step`):
stacking the episode, drawing its atom-drop masks, copying both into the graph's static
inputs, one replay (counted as one operator, ``graph_replay``) and reading the loss back. Its
Adam step is inside the graph; the other rows leave the optimizer step out. The capture is
stood in for by a recording that replays nothing (counting needs no GPU), so that row has no
time.

``--time`` also times one meta-update of each engine (median of ``--repeats``, after a
warm-up), with ``--reuse-memory`` inside :func:`metaacdc.runtime.memory.reuse_freed_memory`
(the batched engine's activations are ``tasks`` times larger: above glibc's mmap threshold
they are page-faulted afresh at every allocation otherwise).

    .venv/bin/python scripts/count_ops.py [--backbone conv4] [--conv plain] [--image-size 28]
        [--ways 5] [--shots 1] [--queries 16] [--tasks 4] [--steps 5] [--first-order]
        [--top 15] [--time [--reuse-memory]]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind
from metaacdc.data import Episode
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.learner import MetaLearner
from metaacdc.reports.estimate import _METADATA_OPS
from metaacdc.runtime.cuda_graphs import Recorded
from metaacdc.runtime.fast_paths import cpu_fast_paths
from metaacdc.runtime.memory import reuse_freed_memory
from metaacdc.training.graphed_step import GraphedTrainStep
from metaacdc.training.step import meta_train_step

CAPTURED = "batched, captured"


class OpTally(TorchDispatchMode):
    """Counts, by name, the operator calls reaching the dispatcher that launch work."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name not in _METADATA_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class ReplayCounter:
    """A stand-in capture for counting: records by running once, and a replay does nothing
    but count itself (the launches inside a graph are not made from Python)."""

    def __init__(self) -> None:
        self.replays = 0

    def warm_up(self, calls: Callable[[], None]) -> None:
        calls()

    def record(self, run: Recorded) -> tuple[Callable[[], None], list[torch.Tensor]]:
        outputs = [output.detach().clone() for output in run()]

        def replay() -> None:
            self.replays += 1

        return replay, outputs


def make_tasks(args: argparse.Namespace) -> list[Episode]:
    generator = torch.Generator().manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    labels = torch.arange(args.ways)
    return [
        Episode(
            torch.randn(args.ways * args.shots, *shape, generator=generator),
            labels.repeat_interleave(args.shots),
            torch.randn(args.ways * args.queries, *shape, generator=generator),
            labels.repeat_interleave(args.queries),
            labels,
        )
        for _ in range(args.tasks)
    ]


def make_learner(args: argparse.Namespace) -> MetaLearner:
    torch.manual_seed(0)
    options: dict[str, Any] = {}
    if args.group_size is not None:
        options["group_size"] = args.group_size
    model = create_backbone(
        args.backbone,
        conv_kind(args.conv, **options),
        num_classes=args.ways,
        image_size=args.image_size,
    )
    return MetaLearner(model, 0.01, args.first_order, args.adapt, args.meta_sgd).train()


def engines(args: argparse.Namespace, replays: ReplayCounter) -> dict[str, Callable[[], None]]:
    """One meta-gradient per engine, as a callable (fresh gradients each call); the captured
    step's replays go to ``replays``."""
    tasks = make_tasks(args)
    seeds = list(range(args.tasks))
    cpu = torch.device("cpu")
    learner = make_learner(args)
    idle = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    batched = BatchedMAML(learner)

    def l2l_step(fast: bool) -> Callable[[], None]:
        def run() -> None:
            learner.zero_grad(set_to_none=True)
            with cpu_fast_paths(fast):
                meta_train_step(learner, tasks, idle, args.steps, cpu, task_seeds=seeds)

        return run

    def batched_step() -> None:
        learner.zero_grad(set_to_none=True)
        batched.meta_gradient(tasks, args.steps, seeds)

    frozen = torch.optim.Adam(learner.parameters(), lr=0.0)
    graphed = GraphedTrainStep(batched, frozen, args.steps, capture=replays)

    def captured_step() -> None:
        graphed(tasks, seeds)

    return {
        "learn2learn (fast paths on)": l2l_step(True),
        "learn2learn (fast paths off)": l2l_step(False),
        "batched": batched_step,
        CAPTURED: captured_step,
    }


def count(step: Callable[[], None]) -> OpTally:
    step()  # warm-up: plans and caches are built once, outside the count
    with OpTally() as tally:
        step()
    return tally


def timed(step: Callable[[], None], repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--conv", default="plain")
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--adapt", default="all", choices=("all", "head"))
    parser.add_argument("--meta-sgd", action="store_true")
    parser.add_argument("--top", type=int, default=0, help="show the N most frequent ops")
    parser.add_argument("--time", action="store_true", help="also time one meta-update")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reuse-memory", action="store_true", help="time with heap reuse")
    args = parser.parse_args()

    replays = ReplayCounter()
    steps = engines(args, replays)
    tallies = {name: count(step) for name, step in steps.items()}
    tallies[CAPTURED].counts["graph_replay"] = replays.replays - 1  # the warm-up's is not counted
    reference = tallies["learn2learn (fast paths off)"].total
    order = "first" if args.first_order else "second"
    print(
        f"{args.backbone} {args.conv} {args.image_size}px {args.ways}W{args.shots}S "
        f"{args.queries}Q, {order} order, {args.tasks} tasks, {args.steps} steps"
    )
    for name, tally in tallies.items():
        print(f"  {name:30s} {tally.total:7d} ops  ({tally.total / reference:.3f}x)")
    if args.top:
        names = Counter[str]()
        for tally in tallies.values():
            names.update(tally.counts)
        print(f"  {'operator':28s} " + " ".join(f"{n[:14]:>14s}" for n in tallies))
        for name, _ in names.most_common(args.top):
            print(f"  {name:28s} " + " ".join(f"{t.counts[name]:14d}" for t in tallies.values()))
    if args.time:
        with reuse_freed_memory() if args.reuse_memory else contextlib.nullcontext():
            for name, step in steps.items():
                if name == CAPTURED:
                    continue  # nothing is replayed without a GPU
                print(f"  {name:30s} {timed(step, args.repeats):7.3f} s per meta-update")


if __name__ == "__main__":
    main()
