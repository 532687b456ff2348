"""Measure the runs of a depth-curve grid on this machine's GPU, beside the cost model.

For every (shots, backbone, conv) of the grid that ``metaacdc curve`` builds from
``--config`` (default: the paper protocol, ``configs/closerlook.yaml``), on random images
of the run's shape (the time of a step does not depend on pixel values):

* seconds per meta-update of :func:`metaacdc.training.meta_train_step` (meta-batch of
  tasks, inner loop, query loss, meta-gradient, Adam), median of ``--updates`` after two
  warm-up updates;
* seconds per evaluation task of :func:`metaacdc.evaluation.evaluate` (``test_inner_steps``
  first-order steps, queries classified), over ``--eval-tasks`` tasks after a warm-up;
* peak GPU memory allocated while training (``torch.cuda.max_memory_allocated``) plus the
  CUDA context's own (``torch.cuda.mem_get_info`` before any allocation);

then projects the whole run as ``metaacdc/estimate.py`` does (every meta-update, a
validation of ``val_tasks`` tasks every ``val_every`` updates, ``--test-tasks`` test tasks)
and prints the estimate's hours and GiB beside the measured ones, with their ratios
(``--compare CSV`` does only that, for measurements written earlier, on any machine). Data
loading is not timed: ``scripts/bench_episodes.py`` measures it.

    python scripts/bench_gpu_runs.py [--config configs/closerlook.yaml] [--shots 1 5]
        [--backbones conv4 ...] [--acdc none net] [--updates 5] [--eval-tasks 20] [--amp]
        [--csv measured.csv]
    python scripts/bench_gpu_runs.py --compare docs/gpu-runs-h100/gpu_runs.csv
"""

from __future__ import annotations

import argparse
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
from metaacdc.config import TrainConfig, build_config
from metaacdc.data import DataFacts, Episode
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.learner import MetaLearner
from metaacdc.reports.curves import grid
from metaacdc.reports.estimate import estimate_grid
from metaacdc.runs.experiment import build_model
from metaacdc.training import meta_train_step

CHANNELS = 3
#: Columns of the ``--csv`` table: the run, seconds per meta-update and per evaluation task,
#: peak GPU GiB, and the projected hours of the whole run.
COLUMNS = (
    "backbone", "conv", "shots", "order", "px", "update_s", "eval_task_s", "peak_gib", "hours",
)  # fmt: skip


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/closerlook.yaml"))
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--backbones", nargs="+", default=list(DEPTH_STUDY))
    parser.add_argument("--acdc", nargs="+", default=["none", "net"])
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
    return parser.parse_args()


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


def measure(config: TrainConfig, args: argparse.Namespace, context_bytes: int) -> dict:
    """Seconds per meta-update and per evaluation task, and peak GPU bytes of training (NaN
    on the CPU)."""
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
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    learner.train()

    def update() -> None:
        meta_train_step(learner, tasks, optimizer, config.inner_steps, device, args.amp)

    # the first two updates warm up (cuDNN's algorithm search, the caching allocator)
    update_seconds = [seconds(update, device) for _ in range(args.updates + 2)][2:]
    peak = torch.cuda.max_memory_allocated(device) + context_bytes if cuda else math.nan
    assert config.image_size is not None
    facts = DataFacts("random", config.image_size, CHANNELS, (0.0,) * 3, (1.0,) * 3)
    evaluation = Learner(learner, config, facts, device)
    test_episodes = RandomEpisodes(config, config.test_queries, pin=cuda)
    evaluate(evaluation, test_episodes, 2, progress=False)  # warm-up
    eval_seconds = seconds(
        lambda: evaluate(evaluation, test_episodes, args.eval_tasks, progress=False), device
    )
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
    """The measured :data:`COLUMNS` of each config, printed as they come; None without CUDA."""
    context_bytes = 0
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("bench_gpu_runs: no CUDA GPU here; use --device cpu to try it", file=sys.stderr)
            return None
        free, total = torch.cuda.mem_get_info(args.device)  # creates the CUDA context
        context_bytes = total - free
    where = torch.cuda.get_device_name(args.device) if context_bytes else "CPU"
    print(
        f"{where}, torch {torch.__version__} (CUDA {torch.version.cuda}), amp={args.amp}, "
        f"CUDA context and other processes {context_bytes / 2**30:.2f} GiB"
    )
    rows = []
    for config in configs:
        measured = measure(config, args, context_bytes)
        hours = project_hours(
            config, measured["update_s"], measured["eval_task_s"], args.test_tasks
        )
        row = {
            "backbone": config.backbone,
            "conv": config.conv,
            "shots": config.shots,
            "order": "1st" if config.first_order else "2nd",
            "px": config.image_size,
            **measured,
            "hours": hours,
        }
        rows.append(row)
        print(
            f"{row['backbone']:<9} {row['conv']:<9} {row['shots']}-shot {row['order']} "
            f"{row['px']:>3}px: update {row['update_s']:.3f} s, eval task "
            f"{row['eval_task_s']:.3f} s, peak {row['peak_gib']:.2f} GiB; run {hours:.1f} h",
            flush=True,
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def compare(table: pd.DataFrame, configs: list[TrainConfig], test_tasks: int) -> None:
    """Print measured beside estimated hours and memory (``metaacdc/estimate.py``)."""
    estimates = estimate_grid(configs, test_tasks)
    table = table.assign(
        est_hours=[e.hours for e in estimates], est_peak_gib=[e.peak_gib for e in estimates]
    )
    table["hours/est"] = table["hours"] / table["est_hours"]
    table["peak/est"] = table["peak_gib"] / table["est_peak_gib"]
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(
        f"\ntotal measured {table['hours'].sum():.1f} GPU h, estimated "
        f"{table['est_hours'].sum():.1f} h; measured/estimated hours "
        f"{table['hours/est'].min():.2f}-{table['hours/est'].max():.2f}, peak memory "
        f"{table['peak/est'].min():.2f}-{table['peak/est'].max():.2f}"
    )


def main() -> int:
    args = options()
    base = build_config(args.config)
    if args.compare:
        if not args.compare.is_file():
            print(f"--compare {args.compare}: no such file", file=sys.stderr)
            return 2
        table = pd.read_csv(args.compare)
        missing = [column for column in COLUMNS if column not in table.columns]
        if missing:
            print(
                f"--compare {args.compare}: not a CSV written by --csv "
                f"(no column {', '.join(missing)})",
                file=sys.stderr,
            )
            return 2
        configs = [
            grid(base, [int(shots)], [backbone], [conv])[0]
            for shots, backbone, conv in zip(
                table["shots"].tolist(), table["backbone"].tolist(), table["conv"].tolist()
            )
        ]
    else:
        convs = [conv_spec(a, None) or "plain" for a in args.acdc]
        configs = grid(base, args.shots, args.backbones, convs)
        measured = measure_grid(args, configs)
        if measured is None:
            return 1
        table = measured
        if args.csv:
            table.to_csv(args.csv, index=False)
    compare(table, configs, args.test_tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
