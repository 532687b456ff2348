"""torch.distributed overhead: meta-training tasks/s with one process and with several
(``torchrun``, gloo on CPU), and the share of a step spent gathering and adding the task
gradients (``StepStats.sync_s``: the all-gather, the ordered sum and any wait for a slower
process).

Every side runs ``metaacdc.training.meta_train_step`` on the same Conv4, the same synthetic
5-way tasks (16 queries) and the same settings (meta-batch 4, 5 inner steps, second order
unless ``--first-order``), each in fresh processes, sides interleaved over ``--rounds``
(medians reported). Episodes are drawn before the clock starts: this measures the step.

Sides: one process of one thread (the unit that N processes multiply), one process of
``--cores`` threads, and N processes of ``cores / N`` threads each, so no side
oversubscribes the CPU. On a 2-core CPU expect little gain over the second side: two
processes of one thread do the work of one process of two threads; the point is the
overhead. The load average is printed: other jobs on the machine slow the multi-threaded
side most (OpenMP threads wait for each other).

    .venv/bin/python scripts/bench_distributed.py [--processes 2] [--cores 2]
        [--image-size 42] [--updates 4] [--rounds 2] [--first-order]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MARK = "BENCH "


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--conv", default="plain")
    parser.add_argument("--image-size", type=int, default=42)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--updates", type=int, default=4, help="meta-updates timed per run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def child(args: argparse.Namespace) -> None:
    """One process of one side: time ``--updates`` meta-updates after one warm-up."""
    from metaacdc.backbones import create_backbone
    from metaacdc.data import EpisodeSampler, synthetic_split
    from metaacdc.data.sampler import task_seed
    from metaacdc.maml.learner import MetaLearner
    from metaacdc.runtime import distributed
    from metaacdc.training import meta_train_step

    with distributed.join("cpu") as world:
        torch.manual_seed(0)
        model = create_backbone(args.backbone, args.conv, image_size=args.image_size)
        learner = MetaLearner(model, 0.01, args.first_order)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        sampler = EpisodeSampler(
            synthetic_split("train", args.image_size, images_per_class=20), 5, args.shots, 16, 0
        )
        mine = world.shard(args.meta_batch)
        batches = [
            [(sampler.episode(u * args.meta_batch + i), task_seed(0, u * args.meta_batch + i))
             for i in mine]
            for u in range(args.updates + 1)
        ]  # fmt: skip
        device = torch.device("cpu")
        sync = 0.0
        started = 0.0
        for update, batch in enumerate(batches):
            if update == 1:  # the first update warms up (allocations, kernel choice)
                distributed.barrier(world)
                started, sync = time.perf_counter(), 0.0
            tasks, seeds = [t for t, _ in batch], [s for _, s in batch]
            stats = meta_train_step(
                learner, tasks, optimizer, args.inner_steps, device, task_seeds=seeds, world=world
            )
            sync += stats.sync_s
        elapsed = time.perf_counter() - started
        result = {
            "rank": world.rank,
            "threads": torch.get_num_threads(),
            "tasks_per_s": args.updates * args.meta_batch / elapsed,
            "sync_share": sync / elapsed,
        }
        results: list[object] = [result]
        if world.distributed:  # one line from rank 0: lines of several processes interleave
            results = [None] * world.size
            torch.distributed.all_gather_object(results, result)
        if world.is_main:
            print(MARK + json.dumps(results), flush=True)


def run_side(args: argparse.Namespace, processes: int, threads: int) -> list[dict]:
    """One fresh run of a side; the result line of every process."""
    forwarded = [a for a in sys.argv[1:] if a != "--child"]
    script = [str(Path(__file__).resolve()), *forwarded, "--child"]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(processes), *script,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{done.stderr[-3000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    return json.loads(line[len(MARK) :])


def main() -> None:
    args = options()
    if args.child:
        child(args)
        return
    sides = ((1, 1), (1, args.cores), (args.processes, max(1, args.cores // args.processes)))
    runs: dict[tuple[int, int], list[list[dict]]] = {side: [] for side in sides}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for side in sides:
            runs[side].append(run_side(args, *side))
    order = "first" if args.first_order else "second"
    print(
        f"{args.backbone} ({args.conv}), {args.image_size} px, 5-way {args.shots}-shot, 16 "
        f"queries, meta-batch {args.meta_batch}, {args.inner_steps} inner steps, {order} "
        f"order; {args.updates} timed meta-updates, median of {args.rounds} runs; "
        f"{args.cores} cores, load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    rates = {}
    for side in sides:
        rates[side] = statistics.median(run[0]["tasks_per_s"] for run in runs[side])
        share = statistics.median(r["sync_share"] for run in runs[side] for r in run)
        processes, threads = side
        print(
            f"  {processes} process(es) x {threads} thread(s): {rates[side]:.2f} tasks/s, "
            f"gradient gather + sum {100 * share:.1f}% of a step"
        )
    single, many = rates[sides[0]], rates[sides[2]]
    print(
        f"  {args.processes} processes over 1 process of 1 thread: {many / single:.2f}x; "
        f"over 1 process of {args.cores} threads: {many / rates[sides[1]]:.2f}x"
    )


if __name__ == "__main__":
    main()
