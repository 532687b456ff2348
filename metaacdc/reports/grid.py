"""Running the depth-curve grid: every run trained (or resumed) and evaluated in turn,
skipping what is finished and what another process is working on, so several `curve`
commands can share one grid and an interrupted grid continues where it stopped."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from metaacdc.config import TrainConfig
from metaacdc.errors import ConfigError
from metaacdc.evaluation.run import evaluate_run
from metaacdc.reports.curves import (
    data_by_image_size,
    evaluation_file,
    grid,
    manifests_by_task_shape,
)
from metaacdc.runs.checkpoint import load_checkpoint
from metaacdc.runs.folder import RunFolder, run_name
from metaacdc.runs.lock import RunBusyError
from metaacdc.training import settings_for_resume, train

#: what became of a run in :func:`run_one`
RunStatus: TypeAlias = Literal["busy", "stopped", "evaluated", "skipped"]


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


@dataclass(frozen=True)
class GridRun:
    """One run of the grid: its settings, its folder and the frozen test episodes it is
    scored on (``None``: the seeded sampler's tasks). Picklable, so a ``--jobs`` process
    can be handed one."""

    config: TrainConfig
    run_dir: Path
    manifest: Path | None

    @property
    def test_steps(self) -> int:
        """The inner steps its test evaluation adapts with (the resolved config's)."""
        assert self.config.test_inner_steps is not None  # plan_grid's configs are resolved
        return self.config.test_inner_steps

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass
class GridOutcome:
    """The run folders of a grid, how many were left to other processes, and (``--jobs``
    only: in one process the first error stops the grid) the runs that failed, by name:
    a user's mistake (``ConfigError``, one line) or an unexpected error."""

    run_dirs: list[Path]
    busy: int
    mistakes: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def plan_grid(
    configs: Sequence[TrainConfig], out: Path, episodes: Sequence[Path] = ()
) -> list[GridRun]:
    """The :class:`GridRun` of each config under ``out``, each with the manifest of its
    task shape among ``episodes``.

    Raises:
        ConfigError: ``episodes`` given but none of a run's task shape.
    """
    manifests = manifests_by_task_shape(list(episodes))
    runs = []
    for config in configs:
        if episodes and (config.ways, config.shots) not in manifests:
            raise ConfigError(
                f"no --episodes manifest of {config.ways}-way {config.shots}-shot tasks "
                f"among {', '.join(map(str, episodes))}"
            )
        manifest = manifests.get((config.ways, config.shots))
        runs.append(GridRun(config, out / run_name(config), manifest))
    return runs


def is_trained(run: GridRun) -> bool:
    """Whether ``run``'s folder holds a run trained to its end.

    Raises:
        ConfigError: the folder's run was trained with other settings than the grid's
            (a grid rerun with a changed flag on the same ``--out``), so it is not
            reported as the grid's.
    """
    folder = RunFolder(run.run_dir)
    if not folder.last.is_file():
        return False
    payload = load_checkpoint(folder.last)
    settings_for_resume(folder, payload, run.config)
    return bool(payload["step"] >= payload["config"]["meta_updates"])


def is_done(run: GridRun, tasks: int) -> bool:
    """Whether ``run`` is trained to the end and evaluated on ``tasks`` of its tasks: what
    :func:`run_one` only reports as skipped."""
    evaluated = evaluation_file(run.run_dir, tasks, run.manifest, run.test_steps) is not None
    return evaluated and is_trained(run)  # a file test first, then a checkpoint read


def run_one(
    run: GridRun,
    *,
    tasks: int,
    processes: int = 1,
    stop_after: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunStatus:
    """Train (or resume) and evaluate one run of the grid: the work of one run, the same
    whether the grid runs in this process or as ``--jobs`` processes.

    Args:
        run: from :func:`plan_grid`.
        tasks: test tasks.
        processes: evaluation worker processes (CPU).
        stop_after: at most this many meta-updates now (continue later).
        progress: show the training progress bar (the evaluation's only on a terminal).
        log: where its progress lines go.

    Returns:
        ``"busy"`` (another process trains or evaluates it: skipped), ``"stopped"``
        (``stop_after`` reached), ``"evaluated"`` or ``"skipped"`` (finished and evaluated
        before).

    Raises:
        ConfigError: a mistake in its settings or data; KeyboardInterrupt after training
        saved its last meta-update.
    """
    config, run_dir = run.config, run.run_dir
    try:
        if not is_trained(run):
            summary = train(
                config,
                run_dir,
                resume=RunFolder(run_dir).last.is_file(),
                stop_after=stop_after,
                progress=progress,
            )
            if not summary.finished:
                log(f"stopped at meta-update {summary.step}; rerun to continue")
                return "stopped"
        evaluated = evaluation_file(run_dir, tasks, run.manifest, run.test_steps)
        if evaluated is not None:
            log(f"finished and evaluated ({evaluated.name}); skipped")
            return "skipped"
        outcome = evaluate_run(
            run_dir,
            tasks=tasks,
            episodes=run.manifest,
            inner_steps=run.test_steps,
            processes=processes,
            progress=progress and sys.stderr.isatty(),
            engine=config.engine,
        )
        log(f"{outcome.result}")
        return "evaluated"
    except RunBusyError:
        log("in progress in another process; skipped")
        return "busy"


def run_grid(
    configs: Sequence[TrainConfig],
    out: Path,
    *,
    tasks: int,
    episodes: Sequence[Path] = (),
    processes: int = 1,
    stop_after: int | None = None,
    jobs: int | Literal["auto"] = 1,
    prepare_job: Callable[[], object] | None = None,
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
        jobs: runs worked on at once, each in a process of its own
            (:mod:`metaacdc.reports.jobs`); 1: one after another in this process, where
            the first error stops the grid; ``"auto"``: as many as fit (see
            :func:`metaacdc.reports.jobs.resolve_jobs`).
        prepare_job: called first in each job's process (a module-level function), e.g.
            the CLI's plugin loading, as a fresh interpreter has not run it.
        log: where progress lines go.

    Raises:
        ConfigError: ``episodes`` given but none of a run's task shape; with one job, any
            run's mistake.
    """
    runs = plan_grid(configs, out, episodes)
    if jobs != 1:
        # imported here: the jobs module imports this one (its processes call run_one)
        from metaacdc.reports.jobs import resolve_jobs, run_jobs

        waiting = [run for run in runs if not is_done(run, tasks)]
        jobs = resolve_jobs(jobs, waiting, log)
        if jobs > 1:
            return run_jobs(
                runs,
                waiting,
                jobs,
                tasks=tasks,
                processes=processes,
                stop_after=stop_after,
                prepare=prepare_job,
                log=log,
            )
    busy = 0
    for index, run in enumerate(runs, 1):
        log(f"[{index}/{len(runs)}] {run.name}")
        status = run_one(
            run,
            tasks=tasks,
            processes=processes,
            stop_after=stop_after,
            log=lambda line: log(f"  {line}"),
        )
        busy += status == "busy"
    return GridOutcome([run.run_dir for run in runs], busy)
