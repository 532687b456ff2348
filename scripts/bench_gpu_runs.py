"""Measure the runs of a depth-curve grid on this machine's GPU, beside the cost model.

For every (shots, backbone, conv) of the grid that ``metaacdc curve`` builds from
``--config`` (default: the paper protocol, ``configs/closerlook.yaml``), on random images
of the run's shape (the time of a step does not depend on pixel values), and for every arm:
each MAML engine of ``--engine`` (default the learn2learn engine) with each CUDA-graph mode
of ``--cuda-graphs`` (default ``off``; ``on`` replays the batched engine's steps as CUDA
graphs, the learn2learn engine has no capture and is measured ``off`` only), one after the
other in this process:

* seconds per meta-update of the arm's training step (meta-batch of tasks, inner loop,
  query loss, meta-gradient, Adam): :func:`metaacdc.training.meta_train_step`,
  :func:`metaacdc.training.step.batched_train_step` for the batched engine, or its
  capture :class:`metaacdc.training.graphed_step.GraphedTrainStep` (with a capturable
  Adam); median of ``--updates`` after two warm-up updates (the captured step's first call
  captures, so the timed updates are replays);
* seconds per evaluation task of :func:`metaacdc.evaluation.evaluate` with the engine
  (``test_inner_steps`` first-order steps, queries classified; the batched engine takes as
  many tasks per call as fit in memory, and with ``on`` replays each call shape as a graph
  from its second sighting), over ``--eval-tasks`` tasks after warm-ups on the same tasks
  (one; two with ``on``, so that the timed evaluation replays);
* peak GPU memory allocated while training (``torch.cuda.max_memory_allocated``) plus the
  CUDA context's own (``torch.cuda.mem_get_info`` before any allocation);

then projects the whole run as ``metaacdc/estimate.py`` does (every meta-update, a
validation of ``val_tasks`` tasks every ``val_every`` updates, ``--test-tasks`` test tasks)
and prints the estimate's hours and GiB beside the measured ones, with their ratios
(``--compare CSV`` does only that, for measurements written earlier, on any machine;
``--no-estimate`` leaves the estimate out, which takes minutes of CPU to count operators).
It then prints the projected GPU hours of the grid per arm, each run's ratios of every arm
to the learn2learn engine's (time per meta-update, per evaluation task, peak memory and
projected hours), and whether the measured numbers meet the targets of CUDA-graph capture:
Conv4 5-way 1-shot second order in at most 20 ms per meta-update, every run at least 5x
faster than with the learn2learn engine (projected hours), the paper grid in at most 10
GPU hours. ``--csv`` is rewritten after every arm measured, so an interrupted run keeps
what it measured. Data loading is not timed: ``scripts/bench_episodes.py`` measures it.

``--dry-run`` checks the script on the CPU, no GPU needed: every config of the grid shrunk
to 32 px images, meta-batch 2, one inner step and 2 queries per class, and per arm one
meta-update and 2 evaluation tasks, without training warm-up or estimate. Off CUDA (the dry
run, or ``--device cpu``) the ``on`` arm runs the capture's code path with
:class:`metaacdc.runtime.cuda_graphs.Rehearsal` in place of ``torch.cuda.graph`` (training
and evaluation), which saves nothing: the dry run's numbers, and its verdicts on the
targets, mean nothing.

    python scripts/bench_gpu_runs.py [--config configs/closerlook.yaml] [--shots 1 5]
        [--backbones conv4 ...] [--acdc none net] [--engine learn2learn batched]
        [--cuda-graphs on off] [--updates 5] [--eval-tasks 20] [--amp] [--csv measured.csv]
        [--no-estimate] [--dry-run]
    python scripts/bench_gpu_runs.py --compare docs/gpu-runs-h100/gpu_runs.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from metaacdc.backbones import DEPTH_STUDY
from metaacdc.cli.options import conv_spec
from metaacdc.config import ENGINES, TrainConfig, build_config
from metaacdc.data import DataFacts, Episode
from metaacdc.data.sampler import task_seed
from metaacdc.errors import ConfigError
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.learner import MetaLearner
from metaacdc.reports.curves import grid
from metaacdc.reports.estimate import estimate_grid
from metaacdc.reports.gpu_runs import (
    CAPTURED,
    COLUMNS,
    Arm,
    arm_comparison,
    arm_name,
    projected_hours,
    read_bench_csv,
    run_configs,
    target_lines,
)
from metaacdc.runs.experiment import build_model
from metaacdc.runtime.cuda_graphs import Rehearsal
from metaacdc.training.graphed_step import GraphedTrainStep, adam
from metaacdc.training.step import batched_train_step, meta_train_step

CHANNELS = 3
#: The engines ``--engine`` measures (``auto`` is one of them on a given device).
ENGINE_CHOICES = tuple(engine for engine in ENGINES if engine != "auto")
#: Warm-up meta-updates before the timed ones (cuDNN's algorithm search, the allocator;
#: with ``on``, the capture: its first call captures, the second replays).
WARM_UPS = 2
#: Evaluations before the timed one, per ``--cuda-graphs`` mode: one warm-up, and with
#: ``on`` a second, since a call shape is captured the second time it is seen.
EVAL_WARM_UPS = {"off": 1, "on": 2}
#: ``--dry-run``'s image side: small, yet enough for the ResNets' five halvings.
DRY_RUN_PX = 32


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/closerlook.yaml"))
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--backbones", nargs="+", default=list(DEPTH_STUDY))
    parser.add_argument("--acdc", nargs="+", default=["none", "net"])
    parser.add_argument(
        "--engine",
        nargs="+",
        choices=ENGINE_CHOICES,
        default=["learn2learn"],
        help="MAML engines measured on every run (default learn2learn)",
    )
    parser.add_argument(
        "--cuda-graphs",
        nargs="+",
        choices=("on", "off"),
        default=["off"],
        help="capture modes measured per engine (default off; the learn2learn engine "
        "has no capture: off only)",
    )
    parser.add_argument("--updates", type=int, default=5, help="meta-updates timed per run")
    parser.add_argument("--eval-tasks", type=int, default=20, help="evaluation tasks timed")
    parser.add_argument("--test-tasks", type=int, default=3000, help="test tasks projected")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast in training")
    parser.add_argument(
        "--csv", type=Path, help="write the measurements here (rewritten after every arm)"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="CSV",
        help="measure nothing: set the estimate beside "
        "measurements written earlier by --csv (no GPU needed)",
    )
    parser.add_argument("--device", default="cuda", help="cuda[:N], or cpu to try the script")
    parser.add_argument(
        "--no-estimate", action="store_true", help="leave the estimate (minutes of CPU) out"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every config tiny on the CPU, once per arm, to check the script",
    )
    args = parser.parse_args()
    args.warm_ups = WARM_UPS
    if args.dry_run:
        args.device, args.updates, args.eval_tasks = "cpu", 1, 2
        args.warm_ups, args.no_estimate = 0, True
    return args


def arms_of(args: argparse.Namespace) -> list[Arm]:
    """The (engine, graphs) arms to measure, in the order given; the learn2learn engine
    with ``on`` is left out, with one line saying so."""
    arms = [(engine, graphs) for engine in args.engine for graphs in args.cuda_graphs]
    if ("learn2learn", "on") in arms:
        print("the learn2learn engine has no CUDA-graph capture: measured with graphs off only")
    return [arm for arm in arms if arm != ("learn2learn", "on")]


def shrunk(config: TrainConfig) -> TrainConfig:
    """``config`` at ``--dry-run``'s size: its model and code path, little work."""
    return dataclasses.replace(
        config,
        image_size=DRY_RUN_PX,
        meta_batch=2,
        inner_steps=1,
        test_inner_steps=1,
        queries=2,
        test_queries=2,
    )


class RandomEpisodes:
    """Episodes of random images of one run's task shape: ``DISTINCT`` of them, made up front
    in pinned memory (as the training loader delivers them) and handed out in turn, so that
    making them is not timed."""

    DISTINCT = 4

    def __init__(self, config: TrainConfig, queries: int, pin: bool) -> None:
        assert config.image_size is not None
        shape = (CHANNELS, config.image_size, config.image_size)
        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(config.ways)

        def images(per_class: int) -> torch.Tensor:
            batch = torch.randn(config.ways * per_class, *shape, generator=generator)
            return batch.pin_memory() if pin else batch

        self.episodes = [
            Episode(
                images(config.shots),
                labels.repeat_interleave(config.shots),
                images(queries),
                labels.repeat_interleave(queries),
                labels,
            )
            for _ in range(self.DISTINCT)
        ]

    def episode(self, index: int) -> Episode:
        return self.episodes[index % self.DISTINCT]


def seconds(work: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``work``, including the device work it queued."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    work()
    synchronize()
    return time.perf_counter() - start


def training_step(
    arm: Arm,
    learner: MetaLearner,
    tasks: list[Episode],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    args: argparse.Namespace,
) -> Callable[[], object]:
    """One meta-update of ``arm`` on ``tasks``, each task's atom-drop masks drawn from its
    seed as in training; ``on`` is captured by its first call (rehearsed off CUDA)."""
    engine, graphs = arm
    seeds = [task_seed(config.seed, t) for t in range(len(tasks))]
    if engine == "learn2learn":
        device = torch.device(args.device)
        return functools.partial(
            meta_train_step,
            learner,
            tasks,
            optimizer,
            config.inner_steps,
            device,
            args.amp,
            task_seeds=seeds,
        )
    batched = BatchedMAML(learner)
    if graphs == "off":
        return functools.partial(
            batched_train_step,
            batched,
            tasks,
            optimizer,
            config.inner_steps,
            amp=args.amp,
            task_seeds=seeds,
        )
    capture = None if args.device.startswith("cuda") else Rehearsal()
    step = GraphedTrainStep(batched, optimizer, config.inner_steps, amp=args.amp, capture=capture)
    return functools.partial(step, tasks, seeds)


def evaluator_for(
    learner: MetaLearner, config: TrainConfig, graphs: str, args: argparse.Namespace
) -> Learner:
    """The evaluation learner of ``graphs``: its config's ``cuda_graphs`` says whether the
    batched engine replays adaptations on CUDA; off CUDA, ``on`` rehearses them."""
    assert config.image_size is not None
    facts = DataFacts("random", config.image_size, CHANNELS, (0.0,) * 3, (1.0,) * 3)
    device = torch.device(args.device)
    evaluator = Learner(learner, dataclasses.replace(config, cuda_graphs=graphs), facts, device)
    if graphs == "on" and device.type != "cuda":
        # the CPU has no graphs: its engine rehearses the capture so that its path runs
        evaluator._engine = BatchedMAML(learner, cuda_graphs=True, capture=Rehearsal())
    return evaluator


def measure(config: TrainConfig, arm: Arm, args: argparse.Namespace, context_bytes: int) -> dict:
    """Seconds per meta-update and per evaluation task of ``arm``, and peak GPU bytes of
    its training (NaN on the CPU)."""
    engine, graphs = arm
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    torch.manual_seed(config.seed)
    assert config.first_order is not None and config.test_inner_steps is not None
    learner = MetaLearner(
        build_model(config, CHANNELS), config.inner_lr, config.first_order, config.adapt
    ).to(device)
    optimizer = adam(learner.parameters(), config.meta_lr, capturable=cuda and graphs == "on")
    episodes = RandomEpisodes(config, config.queries, pin=cuda)
    tasks = [episodes.episode(t) for t in range(config.meta_batch)]
    if cuda:
        gc.collect()  # the previous measurement's tensors, before the peak is reset
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    learner.train()
    update = training_step(arm, learner, tasks, optimizer, config, args)
    timed = [seconds(update, device) for _ in range(args.warm_ups + args.updates)]
    update_seconds = timed[args.warm_ups :]
    peak = torch.cuda.max_memory_allocated(device) + context_bytes if cuda else math.nan
    test_episodes = RandomEpisodes(config, config.test_queries, pin=cuda)
    evaluator = evaluator_for(learner, config, graphs, args)

    def evaluation() -> None:
        evaluate(evaluator, test_episodes, args.eval_tasks, progress=False, engine=engine)

    # without warm-ups (--dry-run) an ``on`` evaluation still sees its shape twice: the
    # timed one captures
    warm_ups = EVAL_WARM_UPS[graphs] - (0 if args.warm_ups else 1)
    for _ in range(warm_ups):
        evaluation()
    eval_seconds = seconds(evaluation, device)
    return {
        "update_s": statistics.median(update_seconds),
        "eval_task_s": eval_seconds / args.eval_tasks,
        "peak_gib": peak / 2**30,
    }


def measured_row(
    config: TrainConfig, arm: Arm, args: argparse.Namespace, context_bytes: int
) -> dict | None:
    """The :data:`COLUMNS` of one run and arm, printed; None (and one line on stderr) where
    an ``on`` arm raised a RuntimeError (CUDA refusing the capture, or running out of
    memory), so that the other arms and runs are still measured."""
    try:
        measured = measure(config, arm, args, context_bytes)
    except RuntimeError as error:
        if arm[1] != "on":
            raise
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        print(
            f"{config.backbone} {config.conv} {arm_name(arm)}: not measured: {reason}",
            file=sys.stderr,
        )
        return None
    hours = projected_hours(config, measured["update_s"], measured["eval_task_s"], args.test_tasks)
    row = {
        "backbone": config.backbone,
        "conv": config.conv,
        "shots": config.shots,
        "order": "1st" if config.first_order else "2nd",
        "px": config.image_size,
        "engine": arm[0],
        "graphs": arm[1],
        **measured,
        "hours": hours,
    }
    print(
        f"{row['backbone']:<9} {row['conv']:<9} {row['shots']}-shot {row['order']} "
        f"{row['px']:>3}px {arm[0]:<11} graphs {arm[1]:<3}: update {row['update_s']:.4f} s, "
        f"eval task {row['eval_task_s']:.4f} s, peak {row['peak_gib']:.2f} GiB; run {hours:.2f} h",
        flush=True,
    )
    return row


def measure_grid(
    args: argparse.Namespace, configs: list[TrainConfig]
) -> tuple[pd.DataFrame, bool] | None:
    """The measured :data:`COLUMNS` of each config and arm, printed as they come and
    written to ``--csv`` after each, and whether every arm was measured; None without
    CUDA."""
    context_bytes = 0
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(
                "bench_gpu_runs: no CUDA GPU here; use --dry-run or --device cpu to try it",
                file=sys.stderr,
            )
            return None
        free, total = torch.cuda.mem_get_info(args.device)  # creates the CUDA context
        context_bytes = total - free
    where = torch.cuda.get_device_name(args.device) if context_bytes else "CPU"
    print(
        f"{where}, torch {torch.__version__} (CUDA {torch.version.cuda}), amp={args.amp}, "
        f"CUDA context and other processes {context_bytes / 2**30:.2f} GiB"
        + ("; dry run: the numbers mean nothing" if args.dry_run else "")
    )
    arms = arms_of(args)
    rows, complete = [], True
    for config in configs:
        for arm in arms:
            row = measured_row(config, arm, args, context_bytes)
            complete = complete and row is not None
            if row is not None:
                rows.append(row)
                if args.csv:
                    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(args.csv, index=False)
    return pd.DataFrame(rows, columns=list(COLUMNS)), complete


def compare(table: pd.DataFrame, configs: list[TrainConfig], test_tasks: int) -> None:
    """Print measured beside estimated hours and memory (``metaacdc/estimate.py``, which
    models the learn2learn engine), with totals per arm."""
    estimates = estimate_grid(configs, test_tasks)
    table = table.assign(
        est_hours=[e.hours for e in estimates], est_peak_gib=[e.peak_gib for e in estimates]
    )
    table["hours/est"] = table["hours"] / table["est_hours"]
    table["peak/est"] = table["peak_gib"] / table["est_peak_gib"]
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for (engine, graphs), rows in table.groupby(["engine", "graphs"], sort=False):
        arm = arm_name((str(engine), str(graphs)))
        print(
            f"\n{arm}: total measured {rows['hours'].sum():.1f} GPU h, estimated "
            f"{rows['est_hours'].sum():.1f} h; measured/estimated hours "
            f"{rows['hours/est'].min():.2f}-{rows['hours/est'].max():.2f}, peak memory "
            f"{rows['peak/est'].min():.2f}-{rows['peak/est'].max():.2f}"
        )


def main() -> int:
    args = options()
    base = build_config(args.config)
    complete = True
    if args.compare:
        try:
            table = read_bench_csv(args.compare, "--compare")
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 2
    else:
        convs = [conv_spec(a, None) or "plain" for a in args.acdc]
        configs = grid(base, args.shots, args.backbones, convs)
        measured = measure_grid(args, [shrunk(c) for c in configs] if args.dry_run else configs)
        if measured is None:
            return 1
        table, complete = measured
    if not args.no_estimate:
        compare(table, run_configs(base, table), args.test_tasks)
    print(f"\n{arm_comparison(table)}")
    targets = target_lines(table)
    if targets:
        print(f"\ntargets of CUDA-graph capture ({arm_name(CAPTURED)}), from the measured numbers:")
        print("\n".join(f"  {line}" for line in targets))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
