"""Running the depth-curve grid: every run trained (or resumed) and evaluated in turn,
skipping what is finished and what another process is working on, so several `curve`
commands can share one grid and an interrupted grid continues where it stopped."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from metaacdc.config import TrainConfig
from metaacdc.errors import ConfigError
from metaacdc.evaluation.run import evaluate_run
from metaacdc.reports.curves import (
    data_by_image_size,
    evaluation_file,
    grid,
    is_finished,
    manifests_by_task_shape,
)
from metaacdc.runs.folder import RunFolder, run_name
from metaacdc.runs.lock import RunBusyError
from metaacdc.training import train


def grid_configs(
    base: TrainConfig,
    shots: Sequence[int],
    backbones: Sequence[str],
    convs: Sequence[str],
    data: Sequence[str] = (),
) -> list[TrainConfig]:
    """The runs of the grid, each with its data: one source for all, or one cache per image
    size when several are given (e.g. 84 px and 224 px miniImageNet).

    Raises:
        ConfigError: a run whose image size has no cache among several.
    """
    if len(data) == 1:
        base = dataclasses.replace(base, data=data[0])
    configs = grid(base, shots, backbones, convs)
    if len(data) > 1:
        caches = data_by_image_size(data)
        for index, config in enumerate(configs):
            if config.image_size not in caches:
                raise ConfigError(
                    f"no --data cache of {config.image_size}px for {config.backbone}; given "
                    f"{', '.join(f'{s}px' for s in sorted(caches))} (metaacdc data prepare "
                    f"--image-size {config.image_size})"
                )
            configs[index] = dataclasses.replace(config, data=caches[config.image_size])
    return configs


@dataclass
class GridOutcome:
    """The run folders of a grid, and how many were left to other processes."""

    run_dirs: list[Path]
    busy: int


def run_grid(
    configs: Sequence[TrainConfig],
    out: Path,
    *,
    tasks: int,
    episodes: Sequence[Path] = (),
    processes: int = 1,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> GridOutcome:
    """Train (or resume) and evaluate every run of ``configs`` under ``out``.

    Args:
        configs: from :func:`grid_configs`.
        out: the grid's folder; each run is ``out / run_name(config)``.
        tasks: test tasks per run.
        episodes: frozen episode manifests; each run takes the one of its task shape.
        processes: evaluation worker processes (CPU).
        stop_after: at most this many meta-updates per run now (continue later).
        log: where progress lines go.

    Raises:
        ConfigError: ``episodes`` given but none of a run's task shape.
    """
    manifests = manifests_by_task_shape(list(episodes))
    chosen: list[Path | None] = []
    for config in configs:
        if episodes and (config.ways, config.shots) not in manifests:
            raise ConfigError(
                f"no --episodes manifest of {config.ways}-way {config.shots}-shot tasks "
                f"among {', '.join(map(str, episodes))}"
            )
        chosen.append(manifests.get((config.ways, config.shots)))
    run_dirs, busy = [], 0
    for index, (config, manifest) in enumerate(zip(configs, chosen), 1):
        run_dir = out / run_name(config)
        run_dirs.append(run_dir)
        log(f"[{index}/{len(configs)}] {run_dir.name}")
        try:
            if not is_finished(run_dir):
                summary = train(
                    config, run_dir, resume=RunFolder(run_dir).last.is_file(), stop_after=stop_after
                )
                if not summary.finished:
                    log(f"  stopped at meta-update {summary.step}; rerun to continue")
                    continue
            evaluated = evaluation_file(run_dir, tasks, manifest)
            if evaluated is None:
                outcome = evaluate_run(
                    run_dir,
                    tasks=tasks,
                    episodes=manifest,
                    processes=processes,
                    progress=sys.stderr.isatty(),
                    engine=config.engine,
                )
                log(f"  {outcome.result}")
            else:
                log(f"  finished and evaluated ({evaluated.name}); skipped")
        except RunBusyError:
            busy += 1
            log("  in progress in another process; skipped")
    return GridOutcome(run_dirs, busy)
