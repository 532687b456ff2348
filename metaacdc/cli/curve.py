"""`metaacdc curve` runs (or resumes) the depth-curve grid and reports it; `metaacdc report`
makes the same table and plot from existing run folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from metaacdc.cli.options import conv_spec
from metaacdc.config import TrainConfig, load_config_file
from metaacdc.convs import ACDC_SHARES
from metaacdc.errors import check_positive_int

#: train settings `curve` lets the command line override (the rest come from --config)
OVERRIDES: tuple[tuple[str, str, Any], ...] = (
    ("--dataset", "dataset", str),
    ("--data", "data", str),
    ("--ways", "ways", int),
    ("--meta-updates", "meta_updates", int),
    ("--image-size", "image_size", int),
    ("--atoms", "atoms", int),
    ("--seed", "seed", int),
    ("--device", "device", str),
    ("--workers", "workers", int),
)


def add_parser(sub: Any) -> None:
    curve = sub.add_parser("curve", help="run or resume the depth-curve grid, then report it")
    curve.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    curve.add_argument(
        "--backbones", nargs="+", default=["conv4", "conv6", "resnet10", "resnet18", "resnet34"]
    )
    curve.add_argument(
        "--acdc",
        nargs="+",
        default=["none", "net"],
        help=f"conv kinds: none (plain MAML) and/or ACDC scopes ({', '.join(ACDC_SHARES)})",
    )
    curve.add_argument("--config", type=Path, help="YAML/TOML base settings for every run")
    for flag, dest, kind in OVERRIDES:
        curve.add_argument(flag, dest=dest, type=kind, default=None)
    curve.add_argument("--tasks", type=int, default=3000, help="test tasks per run (3000)")
    curve.add_argument(
        "--out",
        type=Path,
        default=Path("runs/curve"),
        help="folder of the runs and of the report (default runs/curve)",
    )
    curve.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="at most N meta-updates per unfinished run now (resume later)",
    )
    curve.set_defaults(handler=run_curve)

    report = sub.add_parser("report", help="depth-curve table and plot from run folders")
    report.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", type=Path, default=Path("runs/report"))
    report.set_defaults(handler=run_report)


def _base_config(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for _, dest, _ in OVERRIDES:
        if getattr(args, dest) is not None:
            values[dest] = getattr(args, dest)
    return TrainConfig.from_dict(values, source=str(args.config or "command line"))


def run_curve(args: argparse.Namespace) -> int:
    convs = [conv_spec(acdc, None, None) or "plain" for acdc in args.acdc]
    for shots in args.shots:
        check_positive_int("--shots", shots)
    check_positive_int("--tasks", args.tasks)
    from metaacdc.curves import grid, is_finished, latest_evaluation, summarise, write_report
    from metaacdc.run_evaluation import evaluate_run
    from metaacdc.runfolder import run_name
    from metaacdc.training import train

    configs = grid(_base_config(args), args.shots, args.backbones, convs)
    run_dirs = []
    for index, config in enumerate(configs, 1):
        run_dir = args.out / run_name(config)
        run_dirs.append(run_dir)
        print(f"[{index}/{len(configs)}] {run_dir.name}", flush=True)
        if not is_finished(run_dir):
            summary = train(
                config,
                run_dir,
                resume=(run_dir / "checkpoints" / "last.pt").is_file(),
                stop_after=args.stop_after,
            )
            if not summary.finished:
                print(f"  stopped at meta-update {summary.step}; rerun to continue")
                continue
        evaluated = latest_evaluation(run_dir)
        if evaluated is None or f"-{args.tasks}tasks-" not in evaluated.name:
            outcome = evaluate_run(run_dir, tasks=args.tasks, progress=sys.stderr.isatty())
            print(f"  {outcome.result}")
        else:
            print(f"  finished and evaluated ({evaluated.name}); skipped")
    table = summarise([d for d in run_dirs if d.is_dir()])
    for path in write_report(table, args.out):
        print(path)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from metaacdc.curves import summarise, write_report

    table = summarise(args.runs)
    if table.empty:
        print("no evaluated runs among the given folders; run `metaacdc evaluate RUN_DIR` first")
        return 1
    for path in write_report(table, args.out):
        print(path)
    return 0
