"""Measure the runs of a depth-curve grid on this machine's GPU, beside the cost model.

For every (shots, backbone, conv) of the grid that ``metaacdc curve`` builds from
``--config`` (default: the paper protocol, ``configs/closerlook.yaml``), on random images
of the run's shape (the time of a step does not depend on pixel values), and for every
MAML engine of ``--engine`` (default the learn2learn engine; ``--engine learn2learn
batched`` measures both on each run, one after the other in this process):

* seconds per meta-update of the engine's training step (meta-batch of tasks, inner loop,
  query loss, meta-gradient, Adam): :func:`metaacdc.training.meta_train_step`, or
  :func:`metaacdc.training.step.batched_train_step` for the batched engine; median of
  ``--updates`` after two warm-up updates;
* seconds per evaluation task of :func:`metaacdc.evaluation.evaluate` with the engine
  (``test_inner_steps`` first-order steps, queries classified; the batched engine takes as
  many tasks per call as fit in memory), over ``--eval-tasks`` tasks after a warm-up on the
  same tasks;
* peak GPU memory allocated while training (``torch.cuda.max_memory_allocated``) plus the
  CUDA context's own (``torch.cuda.mem_get_info`` before any allocation);

then projects the whole run as ``metaacdc/estimate.py`` does (every meta-update, a
validation of ``val_tasks`` tasks every ``val_every`` updates, ``--test-tasks`` test tasks)
and prints the estimate's hours and GiB beside the measured ones, with their ratios
(``--compare CSV`` does only that, for measurements written earlier, on any machine;
``--no-estimate`` leaves the estimate out, which takes minutes of CPU to count operators).
It then prints the projected GPU hours of the grid per engine and, with both engines, each
run's batched/learn2learn ratios of time per meta-update, per evaluation task, peak memory
and projected hours. Data loading is not timed: ``scripts/bench_episodes.py`` measures it.

``--dry-run`` checks the script on the CPU, no GPU needed: every config of the grid shrunk
to 32 px images, meta-batch 2, one inner step and 2 queries per class, and per engine one
meta-update and 2 evaluation tasks, without warm-up or estimate (the numbers mean nothing).

    python scripts/bench_gpu_runs.py [--config configs/closerlook.yaml] [--shots 1 5]
        [--backbones conv4 ...] [--acdc none net] [--engine learn2learn batched]
        [--updates 5] [--eval-tasks 20] [--amp] [--csv measured.csv]
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
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.learner import MetaLearner
from metaacdc.reports.curves import grid
from metaacdc.reports.estimate import estimate_grid
from metaacdc.runs.experiment import build_model
from metaacdc.training.step import batched_train_step, meta_train_step

CHANNELS = 3
#: The engines ``--engine`` measures (``auto`` is one of them on a given device).
ENGINE_CHOICES = tuple(engine for engine in ENGINES if engine != "auto")
#: Columns naming a run of the grid.
RUN = ("backbone", "conv", "shots", "order", "px")
#: Columns measured per run and engine: seconds per meta-update and per evaluation task,
#: peak GPU GiB, and the projected hours of the whole run.
MEASURED = ("update_s", "eval_task_s", "peak_gib", "hours")
#: Columns of the ``--csv`` table. CSVs written before ``engine`` existed are the
#: learn2learn engine's.
COLUMNS = (*RUN, "engine", *MEASURED)
#: Warm-up meta-updates before the timed ones (cuDNN's algorithm search, the allocator).
WARM_UPS = 2
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
    parser.add_argument("--updates", type=int, default=5, help="meta-updates timed per run")
    parser.add_argument("--eval-tasks", type=int, default=20, help="evaluation tasks timed")
    parser.add_argument("--test-tasks", type=int, default=3000, help="test tasks projected")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast in training")
    parser.add_argument("--csv", type=Path, help="write the measurements here")
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
        help="run every config tiny on the CPU, once per engine, to check the script",
    )
    args = parser.parse_args()
    args.warm_ups = WARM_UPS
    if args.dry_run:
        args.device, args.updates, args.eval_tasks = "cpu", 1, 2
        args.warm_ups, args.no_estimate = 0, True
    return args


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
    engine: str,
    learner: MetaLearner,
    tasks: list[Episode],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    args: argparse.Namespace,
) -> Callable[[], object]:
    """One meta-update of ``engine`` on ``tasks``."""
    if engine == "batched":
        batched = BatchedMAML(learner)
        return functools.partial(
            batched_train_step, batched, tasks, optimizer, config.inner_steps, amp=args.amp
        )
    device = torch.device(args.device)
    return functools.partial(
        meta_train_step, learner, tasks, optimizer, config.inner_steps, device, args.amp
    )


def measure(config: TrainConfig, engine: str, args: argparse.Namespace, context_bytes: int) -> dict:
    """Seconds per meta-update and per evaluation task of ``engine``, and peak GPU bytes of
    its training (NaN on the CPU)."""
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    torch.manual_seed(config.seed)
    assert config.first_order is not None and config.test_inner_steps is not None
    learner = MetaLearner(
        build_model(config, CHANNELS), config.inner_lr, config.first_order, config.adapt
    ).to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.meta_lr)
    episodes = RandomEpisodes(config, config.queries, pin=cuda)
    tasks = [episodes.episode(t) for t in range(config.meta_batch)]
    if cuda:
        gc.collect()  # the previous measurement's tensors, before the peak is reset
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    learner.train()
    update = training_step(engine, learner, tasks, optimizer, config, args)
    timed = [seconds(update, device) for _ in range(args.warm_ups + args.updates)]
    update_seconds = timed[args.warm_ups :]
    peak = torch.cuda.max_memory_allocated(device) + context_bytes if cuda else math.nan
    assert config.image_size is not None
    facts = DataFacts("random", config.image_size, CHANNELS, (0.0,) * 3, (1.0,) * 3)
    test_episodes = RandomEpisodes(config, config.test_queries, pin=cuda)
    evaluator = Learner(learner, config, facts, device)

    def evaluation() -> None:
        evaluate(evaluator, test_episodes, args.eval_tasks, progress=False, engine=engine)

    if args.warm_ups:
        evaluation()
    eval_seconds = seconds(evaluation, device)
    return {
        "update_s": statistics.median(update_seconds),
        "eval_task_s": eval_seconds / args.eval_tasks,
        "peak_gib": peak / 2**30,
    }


def project_hours(config: TrainConfig, update_s: float, eval_task_s: float, tests: int) -> float:
    """The whole run: every meta-update, every validation, the test evaluation."""
    assert config.meta_updates is not None
    validations = math.ceil(config.meta_updates / config.val_every)
    evaluations = validations * config.val_tasks + tests
    return (config.meta_updates * update_s + evaluations * eval_task_s) / 3600


def measure_grid(args: argparse.Namespace, configs: list[TrainConfig]) -> pd.DataFrame | None:
    """The measured :data:`COLUMNS` of each config and engine, printed as they come; None
    without CUDA."""
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
    rows = []
    for config in configs:
        for engine in args.engine:
            measured = measure(config, engine, args, context_bytes)
            hours = project_hours(
                config, measured["update_s"], measured["eval_task_s"], args.test_tasks
            )
            row = {
                "backbone": config.backbone,
                "conv": config.conv,
                "shots": config.shots,
                "order": "1st" if config.first_order else "2nd",
                "px": config.image_size,
                "engine": engine,
                **measured,
                "hours": hours,
            }
            rows.append(row)
            print(
                f"{row['backbone']:<9} {row['conv']:<9} {row['shots']}-shot {row['order']} "
                f"{row['px']:>3}px {engine:<11}: update {row['update_s']:.3f} s, eval task "
                f"{row['eval_task_s']:.3f} s, peak {row['peak_gib']:.2f} GiB; run {hours:.1f} h",
                flush=True,
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def compare(table: pd.DataFrame, configs: list[TrainConfig], test_tasks: int) -> None:
    """Print measured beside estimated hours and memory (``metaacdc/estimate.py``, which
    models the learn2learn engine), with totals per engine."""
    estimates = estimate_grid(configs, test_tasks)
    table = table.assign(
        est_hours=[e.hours for e in estimates], est_peak_gib=[e.peak_gib for e in estimates]
    )
    table["hours/est"] = table["hours"] / table["est_hours"]
    table["peak/est"] = table["peak_gib"] / table["est_peak_gib"]
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for engine, rows in table.groupby("engine", sort=False):
        print(
            f"\n{engine}: total measured {rows['hours'].sum():.1f} GPU h, estimated "
            f"{rows['est_hours'].sum():.1f} h; measured/estimated hours "
            f"{rows['hours/est'].min():.2f}-{rows['hours/est'].max():.2f}, peak memory "
            f"{rows['peak/est'].min():.2f}-{rows['peak/est'].max():.2f}"
        )


def compare_engines(table: pd.DataFrame) -> None:
    """Projected GPU hours of the grid per engine and, where both engines were measured,
    each run's batched/learn2learn ratios."""
    hours = table.groupby("engine", sort=False)["hours"].sum()
    listed = ", ".join(f"{engine} {total:.1f} h" for engine, total in hours.items())
    print(f"\nprojected GPU hours of the grid per engine: {listed}")
    if not set(ENGINE_CHOICES) <= set(table["engine"]):
        return
    each = {
        engine: table[table["engine"] == engine].set_index(list(RUN))[list(MEASURED)]
        for engine in ENGINE_CHOICES
    }
    ratios = (each["batched"] / each["learn2learn"]).dropna(how="all")
    print("\nbatched / learn2learn, per run:")
    print(ratios.reset_index().to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    spans = ", ".join(
        f"{column} {ratios[column].min():.2f}-{ratios[column].max():.2f}" for column in MEASURED
    )
    print(f"ranges: {spans}")


def read_measurements(csv: Path) -> pd.DataFrame | None:
    """The table ``--csv`` wrote to ``csv``; None (and one line on stderr) if it is not."""
    if not csv.is_file():
        print(f"--compare {csv}: no such file", file=sys.stderr)
        return None
    table = pd.read_csv(csv)
    if "engine" not in table.columns:
        table["engine"] = "learn2learn"  # written before --engine existed
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        print(
            f"--compare {csv}: not a CSV written by --csv (no column {', '.join(missing)})",
            file=sys.stderr,
        )
        return None
    return table[list(COLUMNS)]


def configs_of(base: TrainConfig, table: pd.DataFrame) -> list[TrainConfig]:
    """The grid's config of each row of ``table``."""
    return [
        grid(base, [int(shots)], [backbone], [conv])[0]
        for shots, backbone, conv in zip(
            table["shots"].tolist(), table["backbone"].tolist(), table["conv"].tolist()
        )
    ]


def main() -> int:
    args = options()
    base = build_config(args.config)
    if args.compare:
        table = read_measurements(args.compare)
        if table is None:
            return 2
    else:
        convs = [conv_spec(a, None) or "plain" for a in args.acdc]
        configs = grid(base, args.shots, args.backbones, convs)
        measured = measure_grid(args, [shrunk(c) for c in configs] if args.dry_run else configs)
        if measured is None:
            return 1
        table = measured
        if args.csv:
            table.to_csv(args.csv, index=False)
    if not args.no_estimate:
        compare(table, configs_of(base, table), args.test_tasks)
    compare_engines(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
