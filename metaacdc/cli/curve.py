"""`metaacdc curve` runs (or resumes) the depth-curve grid and reports it; `metaacdc report`
makes the same table and plot from existing run folders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metaacdc.cli.options import ACDC_SHARES, conv_spec, given
from metaacdc.config import TrainConfig, build_config
from metaacdc.errors import check_positive_int

if TYPE_CHECKING:
    import pandas as pd

#: train settings `curve` lets the command line override (the rest come from --config)
OVERRIDES: tuple[tuple[str, str, Any], ...] = (
    ("--dataset", "dataset", str),
    ("--ways", "ways", int),
    ("--meta-updates", "meta_updates", int),
    ("--inner-lr", "inner_lr", float),
    ("--image-size", "image_size", int),
    ("--atoms", "atoms", int),
    ("--seed", "seed", int),
    ("--device", "device", str),
    ("--engine", "engine", str),
    ("--workers", "workers", int),
)


def add_parser(sub: Any) -> None:
    curve = sub.add_parser("curve", help="run or resume the depth-curve grid, then report it")
    curve.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    from metaacdc.backbones import DEPTH_STUDY

    curve.add_argument("--backbones", nargs="+", default=list(DEPTH_STUDY))
    curve.add_argument(
        "--acdc",
        nargs="+",
        default=["none", "net"],
        help=f"conv kinds: none (plain MAML) and/or ACDC scopes ({', '.join(ACDC_SHARES)})",
    )
    curve.add_argument("--config", type=Path, help="YAML/TOML base settings for every run")
    for flag, dest, kind in OVERRIDES:
        curve.add_argument(flag, dest=dest, type=kind, default=None)
    curve.add_argument(
        "--data",
        nargs="+",
        default=None,
        help="a cache or raw source for every run; or several caches of different image "
        "sizes, each run taking the one of its size (e.g. 84 px and 224 px miniImageNet)",
    )
    curve.add_argument("--tasks", type=int, default=3000, help="test tasks per run (3000)")
    curve.add_argument(
        "--eval-processes",
        type=int,
        default=1,
        help="CPU: processes sharing each run's test tasks (see `metaacdc evaluate --help`)",
    )
    curve.add_argument(
        "--episodes",
        type=Path,
        nargs="+",
        default=None,
        help="frozen episode manifests (episodes/*.json); each run is tested on the one of "
        "its ways and shots",
    )
    curve.add_argument(
        "--estimate",
        action="store_true",
        help="print estimated GPU hours and memory per run (metaacdc/estimate.py), run nothing",
    )
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
    _add_reference_option(curve)
    curve.set_defaults(handler=run_curve)

    report = sub.add_parser("report", help="depth-curve table and plot from run folders")
    report.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", type=Path, default=Path("runs/report"))
    _add_reference_option(report)
    report.set_defaults(handler=run_report)


def _add_reference_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reference",
        choices=("auto", "closerlook", "none"),
        default="auto",
        help="published MAML numbers on the plot: auto (when every run is 5-way "
        "miniImageNet), closerlook (always) or none",
    )


def _references(choice: str, table: pd.DataFrame) -> pd.DataFrame | None:
    from metaacdc.reports.curves import REFERENCES, references_for

    return {"auto": references_for(table), "closerlook": REFERENCES, "none": None}[choice]


def _base_config(args: argparse.Namespace) -> TrainConfig:
    overrides = given(args, [dest for _, dest, _ in OVERRIDES])
    return build_config(args.config, overrides, source="command line")


def _grid(args: argparse.Namespace) -> list[TrainConfig]:
    from metaacdc.reports.grid import grid_configs

    convs = [conv_spec(acdc, None) or "plain" for acdc in args.acdc]
    return grid_configs(_base_config(args), args.shots, args.backbones, convs, args.data or [])


def run_curve(args: argparse.Namespace) -> int:
    for shots in args.shots:
        check_positive_int("--shots", shots)
    check_positive_int("--tasks", args.tasks)
    check_positive_int("--eval-processes", args.eval_processes)
    from metaacdc.reports.curves import summarise, write_report
    from metaacdc.reports.grid import run_grid
    from metaacdc.runs.folder import RunFolder

    configs = _grid(args)
    if args.estimate:
        from metaacdc.reports.estimate import estimate_grid, format_estimates

        print(format_estimates(estimate_grid(configs, args.tasks)))
        return 0
    outcome = run_grid(
        configs,
        args.out,
        tasks=args.tasks,
        episodes=args.episodes or [],
        processes=args.eval_processes,
        stop_after=args.stop_after,
        log=lambda line: print(line, flush=True),
    )
    if outcome.busy:
        print(
            f"{outcome.busy} run(s) left to the other process(es) working on {args.out}; the "
            "report below lacks them until one of those processes (or `metaacdc report`) "
            "reports again"
        )
    table = summarise([d for d in outcome.run_dirs if RunFolder(d).config.is_file()])
    for path in write_report(table, args.out, _references(args.reference, table)):
        print(path)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from metaacdc.reports.curves import summarise, write_report

    table = summarise(args.runs)
    if table.empty:
        print("no evaluated runs among the given folders; run `metaacdc evaluate RUN_DIR` first")
        return 1
    for path in write_report(table, args.out, _references(args.reference, table)):
        print(path)
    return 0
