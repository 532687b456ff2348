"""MAML speed: the project's training step and evaluator against plain learn2learn loops.

Both sides use the same backbone, data, tasks and settings, and are measured in the same run,
each measurement in a fresh process, interleaved over ``--rounds`` (medians reported, and
the project/reference ratio of each round, since this machine's speed drifts between rounds):

* training: tasks/s of ``metaacdc.training.meta_train_step`` against the loop of
  learn2learn's own MAML example (clone, adapt, query loss backward per task, one Adam
  step), written here; the row "project, fast paths off" is the project's step within
  ``metaacdc.runtime.fast_paths.cpu_fast_paths(False)`` (PyTorch's batch-norm double
  backward instead of ``metaacdc.maml.batch_norm``'s, the default layout instead of
  channels-last), so its gap to "project" is what the CPU fast paths add to training;
* evaluation: tasks/s of ``metaacdc.evaluation.evaluator.evaluate`` against a sequential learn2learn
  loop (clone, first-order adapt, classify queries), and the time 3,000 tasks would take;
  the row "project, fast paths off" is the project's evaluator within
  ``cpu_fast_paths(False)`` (no channels-last layout, no pool-first batch norm in the query
  pass, no allocator scope), so its gap to "project" is what the CPU fast paths add;
  the row "project, N processes" is the evaluator's worker pool (``evaluate(...,
  processes=N)``, ``metaacdc evaluate --processes N``; N = ``--eval-processes``, default
  the number of CPUs): its rate once the workers run, and their start-up time, which the
  3,000-task time includes;
* memory: peak resident memory of the training process of each side (CUDA: peak allocated);
* the batched engine (``metaacdc.maml.batched.BatchedMAML``), side "batched engine": in
  training, ``metaacdc.training.step.batched_train_step`` (the whole meta-batch as one
  vectorised computation, same order as the other rows); in evaluation, the evaluator with
  ``engine="batched"`` (as many tasks per call as fit in memory); each against the same
  reference loops (the rows "project" evaluate with ``engine="learn2learn"``);
* operators: the ATen operators of one meta-gradient of each engine, counted by
  ``scripts/count_ops.py``'s code (after a warm-up, the optimizer step excluded; the
  learn2learn engine with the CPU fast paths on and off), with batched/learn2learn ratios.
  Counted once, not per round: the count does not vary between runs.

The project's evaluator runs its task loop inside ``metaacdc.runtime.memory.reuse_freed_memory``
(an allocator setting, see there); the evaluation row "reference + allocator" runs the
reference loop inside the same scope, so the project's gain over that row is what the code
itself adds: the channels-last layout, and pooling before the batch norm's map in the query
pass (``metaacdc.backbones.pool_first``). The reference loops run the project's backbone
within ``cpu_fast_paths(False)``: in the textbook order (a plain Conv4 normalises, then
pools). Both sides share the rest of the backbone (pooling before an in-place ReLU).

Targets (CPU): training >= 1.2x the reference, evaluation >= 2x, 3,000 Conv4 5W1S tasks at
84 px <= 15 min, training memory <= 1.2x the reference.

    .venv/bin/python scripts/bench_maml.py [--backbone conv4] [--image-size 84] [--shots 1]
        [--first-order] [--rounds 3] [--jobs train eval ops]
        [--skip allocator fast-paths-off processes batched]

``--jobs`` measures only some jobs and ``--skip`` leaves optional rows out, to keep a run
short; "reference" and "project" are always measured (every ratio is to one of them).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from count_ops import count, engines

from metaacdc.backbones import Backbone, create_backbone
from metaacdc.data import DataFacts, EpisodeSampler, synthetic_split
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.l2l import learn2learn as l2l
from metaacdc.runtime.fast_paths import cpu_fast_paths
from metaacdc.runtime.memory import reuse_freed_memory

POOL = "project, N processes"
PLAIN = "project, fast paths off"
BATCHED = "batched engine"
SIDES = {
    "train": ("reference", PLAIN, "project", BATCHED),
    "eval": ("reference", "reference + allocator", PLAIN, "project", POOL, BATCHED),
}
#: The rows ``--skip`` can leave out, by option value.
OPTIONAL_SIDES = {
    "allocator": "reference + allocator",
    "fast-paths-off": PLAIN,
    "processes": POOL,
    "batched": BATCHED,
}
#: Rows whose ratio is printed as this side over the reference (the others: project/this).
AGAINST_REFERENCE = ("project", POOL, BATCHED)
JOBS = ("train", "eval", "ops")


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--conv", default="plain")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--first-order", action="store_true", help="first-order training")
    parser.add_argument("--updates", type=int, default=2, help="meta-updates timed per process")
    parser.add_argument("--eval-tasks", type=int, default=10, help="tasks timed per process")
    parser.add_argument(
        "--eval-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes of the pooled evaluation (default: the number of CPUs)",
    )
    parser.add_argument(
        "--pool-tasks", type=int, default=60, help="tasks timed per pooled evaluation"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument(
        "--jobs", nargs="+", choices=JOBS, default=list(JOBS), help="what to measure"
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        choices=sorted(OPTIONAL_SIDES),
        default=[],
        help="optional rows left out (reference and project are always measured)",
    )
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "JOB"), help=argparse.SUPPRESS)
    return parser.parse_args()


def setup(args: argparse.Namespace, split: str) -> tuple[Backbone, EpisodeSampler]:
    torch.manual_seed(0)
    model = create_backbone(args.backbone, args.conv, image_size=args.image_size)
    data = synthetic_split(split, args.image_size, images_per_class=20)
    queries = 16 if split == "train" else 15
    return model, EpisodeSampler(data, 5, args.shots, queries, seed=0)


def timed_rate(work: Callable[[], None], count: int) -> float:
    """Items per second of ``work`` (which handles ``count`` items), after one warm-up."""
    work()
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def reference_training(args: argparse.Namespace) -> Callable[[], None]:
    """learn2learn's example loop (examples/vision/maml_miniimagenet.py pattern)."""
    model, sampler = setup(args, "train")
    tasks = [sampler.episode(i) for i in range(args.meta_batch)]
    maml = l2l.algorithms.MAML(model, lr=0.01, first_order=args.first_order)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)

    def updates() -> None:
        for _ in range(args.updates):
            optimizer.zero_grad()
            for task in tasks:
                learner = maml.clone()
                for _ in range(args.inner_steps):
                    learner.adapt(F.cross_entropy(learner(task.support_x), task.support_y))
                F.cross_entropy(learner(task.query_x), task.query_y).backward()
            optimizer.step()

    return updates


def project_training(args: argparse.Namespace, batched: bool) -> Callable[[], None]:
    """The project's training step: the learn2learn engine's ``meta_train_step``, or with
    ``batched`` the batched engine's ``batched_train_step``, on the same tasks."""
    from metaacdc.maml.batched import BatchedMAML
    from metaacdc.maml.learner import MetaLearner
    from metaacdc.training.step import batched_train_step, meta_train_step

    model, sampler = setup(args, "train")
    tasks = [sampler.episode(i) for i in range(args.meta_batch)]
    learner = MetaLearner(model, 0.01, args.first_order)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    step: Callable[[], object]
    if batched:
        engine = BatchedMAML(learner)
        step = functools.partial(batched_train_step, engine, tasks, optimizer, args.inner_steps)
    else:
        cpu = torch.device("cpu")
        step = functools.partial(meta_train_step, learner, tasks, optimizer, args.inner_steps, cpu)

    def updates() -> None:
        for _ in range(args.updates):
            step()

    return updates


def reference_evaluation(args: argparse.Namespace, scoped: bool) -> Callable[[], None]:
    model, sampler = setup(args, "test")
    maml = l2l.algorithms.MAML(model, lr=0.01, first_order=True)

    def tasks() -> None:
        # the allocator scope is entered with the fast paths on (it is one of them); the
        # model then runs without them: a plain Conv4 normalises before pooling
        with reuse_freed_memory() if scoped else contextlib.nullcontext(), cpu_fast_paths(False):
            sequential_tasks()

    def sequential_tasks() -> None:
        for i in range(args.eval_tasks):
            task = sampler.episode(i)
            clone = maml.clone()
            for _ in range(args.inner_steps):
                clone.adapt(F.cross_entropy(clone(task.support_x), task.support_y))
            with torch.no_grad():
                (clone(task.query_x).argmax(1) == task.query_y).float().mean().item()

    return tasks


def project_learner(args: argparse.Namespace) -> tuple[Learner, EpisodeSampler]:
    """The run-free learner the evaluator takes (as ``metaacdc.load`` builds it)."""
    from metaacdc.config import TrainConfig, resolve
    from metaacdc.maml.learner import MetaLearner

    model, sampler = setup(args, "test")
    config = resolve(
        TrainConfig(
            backbone=args.backbone,
            conv=args.conv,
            shots=args.shots,
            image_size=args.image_size,
            test_inner_steps=args.inner_steps,
        )
    )
    data = DataFacts("synthetic", args.image_size, 3, (0.5,) * 3, (0.25,) * 3)
    return Learner(MetaLearner(model, 0.01, True), config, data, torch.device("cpu")), sampler


def project_evaluation(args: argparse.Namespace, engine: str) -> Callable[[], None]:
    """The project's evaluator with MAML engine ``engine``."""
    from metaacdc.evaluation.evaluator import evaluate

    learner, sampler = project_learner(args)

    def tasks() -> None:
        evaluate(learner, sampler, args.eval_tasks, progress=False, engine=engine)

    return tasks


def operator_counts(args: argparse.Namespace) -> dict[str, float]:
    """ATen operators of one meta-gradient per engine, counted by ``scripts/count_ops.py``
    on random tasks of this benchmark's shape (5 ways, 16 queries per class)."""
    settings = argparse.Namespace(
        backbone=args.backbone,
        conv=args.conv,
        group_size=None,
        image_size=args.image_size,
        ways=5,
        shots=args.shots,
        queries=16,
        tasks=args.meta_batch,
        steps=args.inner_steps,
        first_order=args.first_order,
        adapt="all",
        meta_sgd=False,
    )
    return {name: count(step).total for name, step in engines(settings).items()}


def pooled_evaluation(args: argparse.Namespace) -> tuple[float, float]:
    """Tasks/s of the evaluator's worker pool once its workers run, and their start-up
    time in seconds (until each worker could have finished one task)."""
    from metaacdc.evaluation.evaluator import task_accuracy
    from metaacdc.evaluation.pool import EvaluationPool

    learner, sampler = project_learner(args)
    work = functools.partial(task_accuracy, learner, inner_steps=None)
    warm_up = args.eval_processes
    start = time.perf_counter()
    with EvaluationPool(work, sampler, args.eval_processes) as pool:
        results = pool.results(range(warm_up + args.pool_tasks))
        for _ in range(warm_up):
            next(results)
        running = time.perf_counter()
        for _ in results:
            pass
        end = time.perf_counter()
    return args.pool_tasks / (end - running), running - start


def child(args: argparse.Namespace, side: str, job: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line. The side "project, fast
    paths off" runs within ``cpu_fast_paths(False)``."""
    with cpu_fast_paths(side != PLAIN):
        print(json.dumps(measurement(args, side, job)))


def measurement(args: argparse.Namespace, side: str, job: str) -> dict[str, float]:
    if job == "ops":
        return operator_counts(args)
    if job == "train":
        if side == "reference":
            work = reference_training(args)
        else:
            work = project_training(args, batched=side == BATCHED)
        rate = timed_rate(work, args.updates * args.meta_batch)
    elif side == POOL:
        rate, start_up_s = pooled_evaluation(args)
        return {"rate": rate, "start_up_s": start_up_s}
    elif side in ("project", PLAIN, BATCHED):
        engine = "batched" if side == BATCHED else "learn2learn"
        rate = timed_rate(project_evaluation(args, engine), args.eval_tasks)
    else:
        rate = timed_rate(reference_evaluation(args, side != "reference"), args.eval_tasks)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rate": rate, "peak_mb": peak_mb}


def measure(side: str, job: str) -> dict[str, float]:
    command = [sys.executable, __file__, *sys.argv[1:], "--child", side, job]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


Results = dict[tuple[str, str], list[dict[str, float]]]


def measured_sides(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """The sides of each job in ``--jobs`` (training and evaluation), less ``--skip``'s."""
    skipped = {OPTIONAL_SIDES[name] for name in args.skip}
    return {
        job: tuple(side for side in sides if side not in skipped)
        for job, sides in SIDES.items()
        if job in args.jobs
    }


def median(results: Results, side: str, job: str, key: str) -> float:
    """The median over the rounds of one side's ``key``."""
    return statistics.median(r[key] for r in results[(side, job)])


def report_rates(results: Results, job: str, sides: tuple[str, ...]) -> None:
    """Tasks/s of each side of ``job``, its ratio, and the ratios of each round."""
    target = {"train": 1.2, "eval": 2.0}[job]
    project = median(results, "project", job, "rate")
    reference = median(results, "reference", job, "rate")
    print(f"{'training' if job == 'train' else 'evaluation'}:")
    for side in sides:
        rate = median(results, side, job, "rate")
        note = f"project/this {project / rate:5.2f}"
        if side in AGAINST_REFERENCE:
            note = f"this/reference {rate / reference:5.2f}"
        print(f"  {side:24s} {rate:6.2f} tasks/s   {note}")
    print(f"  target: project >= {target}x reference")
    for side, name in (("project", "project"), (BATCHED, "batched")):
        if side in sides:
            rounds = zip(results[(side, job)], results[("reference", job)])
            ratios = sorted(mine["rate"] / theirs["rate"] for mine, theirs in rounds)
            listed = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"  {name}/reference round by round: {listed}")


def report_evaluation_time(
    results: Results, args: argparse.Namespace, sides: tuple[str, ...]
) -> None:
    """The time 3,000 evaluation tasks would take on each evaluation side of the project."""
    single_minutes = 3000 / median(results, "project", "eval", "rate") / 60
    if POOL in sides:
        start_up_s = median(results, POOL, "eval", "start_up_s")
        pooled_minutes = (start_up_s + 3000 / median(results, POOL, "eval", "rate")) / 60
        each = sorted((r["start_up_s"] + 3000 / r["rate"]) / 60 for r in results[(POOL, "eval")])
        print(
            f"3,000 evaluation tasks: {single_minutes:.1f} min in one process; "
            f"{pooled_minutes:.1f} min with {args.eval_processes} processes (start-up "
            f"{start_up_s:.0f} s included; rounds {', '.join(f'{m:.1f}' for m in each)}) "
            "(target <= 15)"
        )
    else:
        print(f"3,000 evaluation tasks: {single_minutes:.1f} min in one process (target <= 15)")
    if BATCHED in sides:
        batched_minutes = 3000 / median(results, BATCHED, "eval", "rate") / 60
        print(f"3,000 evaluation tasks with the batched engine: {batched_minutes:.1f} min")


def report_memory(results: Results, sides: tuple[str, ...]) -> None:
    """Peak memory of each side's training process, and its ratio to the reference's."""
    print("peak memory of the training process (RSS):")
    reference_mb = median(results, "reference", "train", "peak_mb")
    for side in sides:
        mb = median(results, side, "train", "peak_mb")
        print(f"  {side:24s} {mb:6.0f} MB   ratio to reference {mb / reference_mb:.2f}")
    print("  target: project <= 1.2x reference")


def report_operators(counts: dict[str, float]) -> None:
    """Operators per meta-update of each engine, and batched/learn2learn."""
    print(
        "ATen operators per meta-update (scripts/count_ops.py: one meta-gradient after a "
        "warm-up, optimizer step excluded):"
    )
    batched = counts["batched"]
    for name, total in counts.items():
        note = "" if name == "batched" else f"   batched/this {batched / total:.3f}"
        print(f"  {name:30s} {total:7.0f} ops{note}")


def main() -> None:
    args = options()
    if args.child:
        child(args, *args.child)
        return
    order = "first" if args.first_order else "second"
    print(
        f"{args.backbone} ({args.conv}), {args.image_size}px, 5-way {args.shots}-shot, "
        f"{args.inner_steps} inner steps; training {order} order, meta-batch {args.meta_batch}; "
        f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds"
    )
    jobs = measured_sides(args)
    results: Results = {}
    for _ in range(args.rounds):
        for job, sides in jobs.items():
            for side in sides:
                results.setdefault((side, job), []).append(measure(side, job))
    for job, sides in jobs.items():
        report_rates(results, job, sides)
    if "eval" in jobs:
        report_evaluation_time(results, args, jobs["eval"])
    if "train" in jobs:
        report_memory(results, jobs["train"])
    if "ops" in args.jobs:
        report_operators(measure("engines", "ops"))


if __name__ == "__main__":
    main()
