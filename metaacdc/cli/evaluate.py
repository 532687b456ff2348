"""`metaacdc evaluate`: mean accuracy ± 95% CI of a run over test tasks, written to CSV."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metaacdc.errors import ConfigError, check_choice, check_positive_int

if TYPE_CHECKING:
    from metaacdc.api import Learner
    from metaacdc.data import CachedSplit

SPLITS = ("train", "val", "test")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate", help="accuracy of a run over test tasks (mean ± 95%% CI), to CSV"
    )
    parser.add_argument("run", type=Path, metavar="RUN_DIR", help="run folder to evaluate")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_choice("--split", args.split, SPLITS)
    check_positive_int("--seed", args.seed, minimum=0)
    check_positive_int("--workers", args.workers, minimum=0)
    if args.tasks is not None:
        check_positive_int("--tasks", args.tasks)
    if args.inner_steps is not None:
        check_positive_int("--inner-steps", args.inner_steps, minimum=0)
    if not args.run.is_dir():
        raise FileNotFoundError(f"{args.run}: run folder not found")

    from metaacdc.api import load  # learn2learn takes seconds to import: after the checks
    from metaacdc.data import EpisodeSampler, ManifestSampler, load_manifest
    from metaacdc.evaluation import evaluate
    from metaacdc.experiment import evaluation_transform
    from metaacdc.runfolder import RunFolder

    learner = load(args.run, device=args.device)
    config = learner.config
    split = _open_split(learner, args.data, args.split)
    transform = evaluation_transform(config)
    mean, std = learner.data["mean"], learner.data["std"]  # the run's, as the API uses
    sampler: EpisodeSampler | ManifestSampler
    if args.episodes is not None:
        manifest = load_manifest(args.episodes)
        ways, shots = int(manifest.header["ways"]), int(manifest.header["shots"])
        if ways > learner.ways:
            raise ConfigError(
                f"{args.episodes}: {ways}-way tasks but the run's head has {learner.ways} "
                f"outputs; use a manifest of at most {learner.ways} ways"
            )
        tasks = len(manifest) if args.tasks is None else args.tasks
        if tasks > len(manifest):
            raise ConfigError(
                f"--tasks={tasks} but {args.episodes} holds {len(manifest)} tasks; "
                f"use --tasks <= {len(manifest)}"
            )
        sampler = ManifestSampler(split, manifest, transform=transform, mean=mean, std=std)
        tag = _manifest_stem(args.episodes)
    else:
        ways, shots = config.ways, config.shots
        tasks = 3000 if args.tasks is None else args.tasks
        sampler = EpisodeSampler(
            split,
            ways=ways,
            shots=shots,
            queries=config.test_queries,
            seed=args.seed,
            transform=transform,
            mean=mean,
            std=std,
        )
        tag = f"seed{args.seed}"
    steps = config.test_inner_steps if args.inner_steps is None else args.inner_steps
    result = evaluate(
        learner,
        sampler,
        tasks,
        inner_steps=steps,
        progress=not args.no_progress and sys.stderr.isatty(),
        workers=args.workers,
    )
    csv = RunFolder(args.run).evaluations / f"{args.split}-{tag}-{tasks}tasks-{steps}steps.csv"
    result.to_csv(csv)
    rows = [
        ("run", "backbone", "conv", "ways", "shots", "tasks", "accuracy (%)"),
        (
            str(args.run),
            config.backbone,
            config.conv,
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


def _open_split(learner: Learner, data: str | None, name: str) -> CachedSplit:
    """The split to evaluate on: ``--data`` (a cache, or a source prepared on first use) or
    the run's own data; refused when its images do not fit the model."""
    from metaacdc.data import is_complete, open_split
    from metaacdc.experiment import open_splits

    config = learner.config
    if data is not None and is_complete(Path(data) / name):
        split = open_split(Path(data) / name)
    else:
        if data is not None:
            config = dataclasses.replace(config, data=data)
        split = open_splits(config, (name,))[name]
    if split.channels != learner.channels or split.meta.image_size != learner.image_size:
        raise ConfigError(
            f"the {split.describe()} holds {split.channels}-channel "
            f"{split.meta.image_size}px images but the run takes {learner.channels}-channel "
            f"{learner.image_size}px images; give --data of the run's kind and size"
        )
    if split.meta.source != learner.data["source"]:
        print(
            f"note: evaluating a run trained on {learner.data['source']} data on "
            f"{split.describe()}",
            file=sys.stderr,
        )
    return split


def _manifest_stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".json"):
        name = name.removesuffix(suffix)
    return name
