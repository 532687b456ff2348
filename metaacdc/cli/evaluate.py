"""`metaacdc evaluate`: mean accuracy ± 95% CI of a run over test tasks, written to CSV.

The row printed and the CSV name the meta-update of the checkpoint scored (``step``,
``checkpoint_step``); a run being trained or unfinished gets a note on stderr. Under
``torchrun`` the processes share the tasks; rank 0 prints the result and writes the CSV.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from metaacdc.config import ENGINES
from metaacdc.errors import check_choice, check_positive_int

SPLITS = ("train", "val", "test")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate", help="accuracy of a run over test tasks (mean ± 95%% CI), to CSV"
    )
    parser.add_argument(
        "run",
        type=Path,
        metavar="RUN_DIR",
        help="run folder to evaluate (its best checkpoint), or one checkpoint in it "
        "(RUN_DIR/checkpoints/last.pt)",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="number of tasks (default 3000; with --episodes, all of the manifest's)",
    )
    parser.add_argument(
        "--episodes",
        type=Path,
        default=None,
        help="frozen episode manifest (episodes/*.json); its ways/shots/queries are used",
    )
    parser.add_argument(
        "--inner-steps", type=int, default=None, help="adaptation steps (default the run's)"
    )
    parser.add_argument(
        "--data", default=None, help="data to evaluate on instead of the run's (cache or source)"
    )
    parser.add_argument("--split", default="test", help="split to draw tasks from (default test)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (without --episodes)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--workers", type=int, default=0, help="background processes preparing episodes"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="CPU: processes sharing the tasks, each with cores/N threads (faster than one "
        "process with all cores; try the number of cores)",
    )
    parser.add_argument(
        "--engine",
        default="auto",
        help="learn2learn (tasks one by one), batched (many tasks at once) or auto "
        "(default: batched on CUDA, learn2learn on the CPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_choice("--split", args.split, SPLITS)
    check_choice("--engine", args.engine, ENGINES)
    check_positive_int("--seed", args.seed, minimum=0)
    check_positive_int("--workers", args.workers, minimum=0)
    check_positive_int("--processes", args.processes)
    if args.tasks is not None:
        check_positive_int("--tasks", args.tasks)
    if args.inner_steps is not None:
        check_positive_int("--inner-steps", args.inner_steps, minimum=0)
    if not args.run.exists():
        raise FileNotFoundError(f"{args.run}: run folder or checkpoint not found")

    from metaacdc.evaluation.run import evaluate_run  # imports learn2learn: after the checks
    from metaacdc.runtime import distributed

    with distributed.join(args.device) as world:
        outcome = evaluate_run(
            args.run,
            tasks=args.tasks,
            episodes=args.episodes,
            inner_steps=args.inner_steps,
            data=args.data,
            split=args.split,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
            processes=args.processes,
            progress=not args.no_progress and sys.stderr.isatty(),
            engine=args.engine,
        )
    if not world.is_main:
        return 0
    config, result, csv = outcome.config, outcome.result, outcome.csv
    ways, shots, tasks = outcome.ways, outcome.shots, outcome.tasks
    rows = [
        ("run", "backbone", "conv", "step", "ways", "shots", "tasks", "accuracy (%)"),
        (
            str(args.run),
            config.backbone,
            config.conv,
            str(outcome.checkpoint_step),
            str(ways),
            str(shots),
            str(tasks),
            f"{100 * result.mean:.2f} ± {100 * result.ci95:.2f}",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"per-task accuracies: {csv}")
    return 0
