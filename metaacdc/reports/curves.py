"""Depth curves: the grid of runs (shots x backbones x conv kinds; :mod:`metaacdc.reports.grid`
runs or resumes it), then a table (CSV + Markdown) and a plot of test accuracy against depth
with 95% intervals."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from metaacdc.backbones import DEPTH_STUDY, backbone_meta
from metaacdc.config import TEST_STEPS_PER_STEP, TrainConfig, resolve
from metaacdc.errors import ConfigError
from metaacdc.evaluation.run import evaluation_csv_name, evaluation_tag
from metaacdc.runs.folder import RunFolder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Columns of every table the curve and report commands write.
COLUMNS = (
    "run",
    "backbone",
    "depth",
    "conv",
    "dataset",
    "ways",
    "shots",
    "tasks",
    "accuracy",
    "ci95",
)
#: Columns of :data:`REFERENCES`.
REFERENCE_COLUMNS = ("source", "backbone", "shots", "accuracy", "ci95")
_CLOSERLOOK = "CloserLook MAML (reference)"
_MAML_PAPER = "MAML paper, Conv4-32 (reference)"
#: Published 5-way MAML accuracies (%) on miniImageNet (design §5): CloserLook's released
#: results sheet, and the MAML paper's Conv4 with 32 filters. They are miniImageNet numbers:
#: plots draw them next to miniImageNet runs only (see :func:`references_for`).
REFERENCES = pd.DataFrame(
    [
        (_CLOSERLOOK, "conv4", 1, 46.47, 0.82),
        (_CLOSERLOOK, "conv6", 1, 50.96, 0.92),
        (_CLOSERLOOK, "resnet10", 1, 54.69, 0.89),
        (_CLOSERLOOK, "resnet18", 1, 49.61, 0.92),
        (_CLOSERLOOK, "resnet34", 1, 51.46, 0.90),
        (_CLOSERLOOK, "conv4", 5, 62.71, 0.71),
        (_CLOSERLOOK, "conv6", 5, 66.09, 0.71),
        (_CLOSERLOOK, "resnet10", 5, 66.62, 0.83),
        (_CLOSERLOOK, "resnet18", 5, 65.72, 0.77),
        (_CLOSERLOOK, "resnet34", 5, 65.90, 0.79),
        (_MAML_PAPER, "conv4", 1, 48.70, 1.84),
        (_MAML_PAPER, "conv4", 5, 63.11, 0.92),
    ],
    columns=list(REFERENCE_COLUMNS),
)


def grid(
    base: TrainConfig, shots: Sequence[int], backbones: Sequence[str], convs: Sequence[str]
) -> list[TrainConfig]:
    """One resolved config per (shots, backbone, conv), the rest taken from ``base``.

    Protocol defaults that depend on the backbone or the shots (image size, first order,
    length) are re-derived per run unless ``base`` sets them.
    """
    return [
        resolve(dataclasses.replace(base, shots=s, backbone=b, conv=c))
        for s in shots
        for b in backbones
        for c in convs
    ]


def reported_evaluation(run_dir: Path, test_steps: int) -> Path | None:
    """The evaluation a report shows for a run: its most recently written test evaluation
    at ``test_steps`` inner steps (the run's own test-time steps), so one table never mixes
    step counts; ``None`` if it has none."""
    suffix = f"-{test_steps}steps.csv"
    tests = RunFolder(run_dir).evaluations.glob("test-*.csv")
    files = [p for p in tests if p.name.endswith(suffix)]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def data_by_image_size(paths: Sequence[str]) -> dict[int, str]:
    """Prepared caches keyed by image size, so one grid can give the Conv backbones their
    84 px cache and the ResNets their 224 px one. Each path must be a cache root."""
    from metaacdc.data import is_complete, open_split

    caches: dict[int, str] = {}
    for path in paths:
        if not is_complete(Path(path) / "train"):
            raise ConfigError(
                f"--data {path}: not a prepared cache (no complete train split); with several "
                "--data paths each must come from `metaacdc data prepare`"
            )
        size = open_split(Path(path) / "train").meta.image_size
        if size in caches:
            raise ConfigError(f"--data {caches[size]} and {path} are both {size}px caches")
        caches[size] = str(path)
    return caches


def manifests_by_task_shape(paths: Sequence[Path]) -> dict[tuple[int, int], Path]:
    """Frozen episode manifests keyed by (ways, shots), read from their headers."""
    from metaacdc.data import load_manifest

    manifests: dict[tuple[int, int], Path] = {}
    for path in paths:
        header = load_manifest(path).header
        shape = (int(header["ways"]), int(header["shots"]))
        if shape in manifests:
            raise ConfigError(f"--episodes {manifests[shape]} and {path} are both {shape} tasks")
        manifests[shape] = Path(path)
    return manifests


def evaluation_file(run_dir: Path, tasks: int, episodes: Path | None, steps: int) -> Path | None:
    """The test evaluation of ``run_dir`` on ``tasks`` tasks of the frozen ``episodes`` when
    given (else of the seeded sampler) at ``steps`` inner steps, if one was written."""
    name = evaluation_csv_name("test", evaluation_tag(episodes), tasks, steps)
    path = RunFolder(run_dir).evaluations / name
    return path if path.is_file() else None


def summarise(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """One row per run with its :func:`reported_evaluation` (runs without one are skipped;
    one evaluated at other step counts only is named on stderr, so it is not lost
    silently)."""
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not RunFolder(run_dir).config.is_file():
            raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
        config = yaml.safe_load(RunFolder(run_dir).config.read_text())
        # what resolve() gives a config without it, as `evaluate` of the run would use
        steps = int(config.get("test_inner_steps") or TEST_STEPS_PER_STEP * config["inner_steps"])
        evaluation = reported_evaluation(run_dir, steps)
        if evaluation is None:
            if any(RunFolder(run_dir).evaluations.glob("test-*.csv")):
                print(
                    f"note: {run_dir}: left out, no test evaluation at its {steps} test-time "
                    f"inner steps (`metaacdc evaluate {run_dir}` writes one)",
                    file=sys.stderr,
                )
            continue
        table = pd.read_csv(evaluation, dtype={"task": str}).set_index("task")["accuracy"]
        rows.append(
            {
                "run": run_dir.name,
                "backbone": config["backbone"],
                "depth": backbone_meta(config["backbone"]).depth,
                "conv": config["conv"],
                "dataset": config["dataset"],
                "ways": config["ways"],
                "shots": config["shots"],
                "tasks": int(len(table) - 2),
                "accuracy": 100 * float(table["mean"]),
                "ci95": 100 * float(table["ci95"]),
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS)).sort_values(["shots", "conv", "depth"])


def references_for(table: pd.DataFrame) -> pd.DataFrame | None:
    """:data:`REFERENCES` when every run of ``table`` is 5-way miniImageNet (the setting
    the published numbers are for), else ``None``."""
    if table.empty:
        return None
    if set(table["dataset"]) == {"miniimagenet"} and set(table["ways"]) == {5}:
        return REFERENCES
    return None


def write_report(
    table: pd.DataFrame, out: Path, references: pd.DataFrame | None = None
) -> list[Path]:
    """``curve.csv``, ``curve.md`` and ``curve.png`` (one panel per shot setting, one line
    per conv kind, accuracy in % with 95% intervals against depth). ``references`` (rows
    as :data:`REFERENCES`) are drawn as one dashed grey series per ``source``; they are
    not written to the tables."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out / "curve.csv", out / "curve.md", out / "curve.png"
    table.to_csv(csv_path, index=False, float_format="%.4f")
    md_path.write_text(_markdown(table))
    figure = plot_curve(table, references)
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return [csv_path, md_path, png_path]


def plot_curve(table: pd.DataFrame, references: pd.DataFrame | None = None) -> Figure:
    """The figure of :func:`write_report`: one panel per shot setting, one line per conv
    kind, and each ``references`` source as a dashed grey series."""
    import matplotlib.pyplot as plt

    shot_settings = sorted(table["shots"].unique()) or [1]
    figure, axes = plt.subplots(
        1, len(shot_settings), figsize=(5 * len(shot_settings), 4), squeeze=False
    )
    # the study's backbones and any other of the table, equally spaced, shallow to deep
    depths = {b: backbone_meta(b).depth for b in DEPTH_STUDY}
    depths |= dict(zip(table["backbone"], table["depth"]))
    order = sorted(depths, key=lambda backbone: (depths[backbone], backbone))
    datasets = ", ".join(sorted(set(table["dataset"])))
    for axis, shots in zip(axes[0], shot_settings):
        part = table[table["shots"] == shots]
        groups = list(part.groupby("conv"))
        for offset, (conv, rows) in enumerate(groups):
            rows = rows.sort_values("depth")
            x = [order.index(b) + 0.06 * (offset - (len(groups) - 1) / 2) for b in rows["backbone"]]
            axis.errorbar(
                x,
                rows["accuracy"],
                yerr=rows["ci95"],
                marker="o",
                capsize=3,
                label=f"MAML ({conv})",
            )
        if references is not None:
            _draw_references(axis, references[references["shots"] == shots], order)
        axis.set_xticks(range(len(order)))
        axis.set_xticklabels(order)
        ways = int(part["ways"].iloc[0]) if len(part) else 5
        axis.set_title(f"{datasets}, {ways}-way {shots}-shot" if datasets else f"{shots}-shot")
        axis.set_xlabel("backbone (shallow to deep)")
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _draw_references(axis: Any, references: pd.DataFrame, order: list[str]) -> None:
    sources = references.groupby("source", sort=False)
    for index, ((source, rows), marker) in enumerate(zip(sources, "sD^v")):
        axis.errorbar(
            [order.index(b) + 0.1 * index for b in rows["backbone"]],  # side by side
            rows["accuracy"],
            yerr=rows["ci95"],
            marker=marker,
            linestyle="--" if len(rows) > 1 else "none",
            capsize=3,
            color="grey",
            alpha=0.8,
            label=source,
        )


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table.itertuples(index=False):
        values = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
