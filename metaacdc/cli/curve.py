"""`metaacdc curve` runs (or resumes) the depth-curve grid and reports it; `metaacdc report`
makes the same table and plot from existing run folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from metaacdc.cli.options import ACDC_SHARES, conv_spec, given
from metaacdc.config import TrainConfig, build_config
from metaacdc.errors import ConfigError, check_positive_int

if TYPE_CHECKING:
    import pandas as pd

#: train settings `curve` lets the command line override (the rest come from --config)
OVERRIDES: tuple[tuple[str, str, Any], ...] = (
    ("--dataset", "dataset", str),
    ("--ways", "ways", int),
    ("--meta-updates", "meta_updates", int),
    ("--inner-lr", "inner_lr", float),
    ("--test-inner-steps", "test_inner_steps", int),
    ("--init", "init", str),
    ("--image-size", "image_size", int),
    ("--atoms", "atoms", int),
    ("--seed", "seed", int),
    ("--device", "device", str),
    ("--engine", "engine", str),
    ("--cuda-graphs", "cuda_graphs", str),
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
        "--calibration",
        type=Path,
        metavar="CSV",
        help="with --estimate: scale its hours for the arm (--engine, --cuda-graphs) these "
        "runs take on a GPU, fitted on a table of scripts/bench_gpu_runs.py --csv",
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
    curve.add_argument(
        "--jobs",
        default="1",
        metavar="N|auto",
        help="runs trained and evaluated at once, each in a process of its own (each "
        "resumable as with 1); auto: as many as the GPU's free memory holds by the "
        "estimated peaks, 1 on the CPU (default 1: one after another in this process)",
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


def parse_jobs(text: str) -> int | Literal["auto"]:
    """``--jobs``: a whole number >= 1, or ``auto``.

    Raises:
        ConfigError: anything else, in one line.
    """
    if text == "auto":
        return "auto"
    try:
        jobs = int(text)
    except ValueError:
        raise ConfigError(
            f"--jobs={text!r} is not valid; expected an integer >= 1 or auto"
        ) from None
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} is not valid; expected an integer >= 1 or auto")
    return jobs


def run_curve(args: argparse.Namespace) -> int:
    for shots in args.shots:
        check_positive_int("--shots", shots)
    check_positive_int("--tasks", args.tasks)
    check_positive_int("--eval-processes", args.eval_processes)
    jobs = parse_jobs(args.jobs)
    from metaacdc.cli import load_plugins  # for each --jobs process, as main() did here
    from metaacdc.reports.curves import summarise, write_report
    from metaacdc.reports.grid import run_grid
    from metaacdc.runs.folder import RunFolder

    configs = _grid(args)
    if args.calibration and not args.estimate:
        raise ConfigError("--calibration scales the hours of --estimate; give --estimate too")
    if args.estimate:
        from metaacdc.reports.calibration import calibrated_estimates
        from metaacdc.reports.estimate import estimate_grid, format_estimates

        if args.calibration:
            base = _base_config(args)
            print(calibrated_estimates(base, configs, args.calibration, args.tasks))
        else:
            print(format_estimates(estimate_grid(configs, args.tasks)))
        return 0
    outcome = run_grid(
        configs,
        args.out,
        tasks=args.tasks,
        episodes=args.episodes or [],
        processes=args.eval_processes,
        stop_after=args.stop_after,
        jobs=jobs,
        prepare_job=load_plugins,
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
    # --jobs: the runs that failed, once the others ended (with one job the first error
    # stops the grid, and the CLI reports it)
    for name, message in outcome.mistakes.items():
        print(f"metaacdc curve: error: {name}: {message}", file=sys.stderr)
    for name, message in outcome.failures.items():
        print(f"metaacdc curve: failed: {name}: {message}", file=sys.stderr)
    return 1 if outcome.failures else 2 if outcome.mistakes else 0


def run_report(args: argparse.Namespace) -> int:
    from metaacdc.reports.curves import summarise, write_report

    table = summarise(args.runs)
    if table.empty:
        print("no evaluated runs among the given folders; run `metaacdc evaluate RUN_DIR` first")
        return 1
    for path in write_report(table, args.out, _references(args.reference, table)):
        print(path)
    return 0
