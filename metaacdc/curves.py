"""Depth curves: the grid of runs (shots x backbones x conv kinds), run or resumed, then a
table (CSV + Markdown) and a plot of test accuracy against depth with 95% intervals."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import yaml

from metaacdc.checkpoint import load_checkpoint
from metaacdc.config import TrainConfig, resolve
from metaacdc.errors import ConfigError
from metaacdc.runfolder import RunFolder

#: Convolutional layers of each backbone of the depth study (its x position on the plot).
DEPTHS: dict[str, int] = {"conv4": 4, "conv6": 6, "resnet10": 10, "resnet18": 18, "resnet34": 34}
#: Columns of every table the curve and report commands write.
COLUMNS = ("run", "backbone", "depth", "conv", "ways", "shots", "tasks", "accuracy", "ci95")


def grid(
    base: TrainConfig, shots: Sequence[int], backbones: Sequence[str], convs: Sequence[str]
) -> list[TrainConfig]:
    """One resolved config per (shots, backbone, conv), the rest taken from ``base``.

    Protocol defaults that depend on the backbone or the shots (image size, first order,
    length) are re-derived per run unless ``base`` sets them.
    """
    unknown = [b for b in backbones if b not in DEPTHS]
    if unknown:
        raise ConfigError(
            f"backbones {', '.join(unknown)} are not in the depth study; "
            f"accepted values: {', '.join(DEPTHS)}"
        )
    return [
        resolve(dataclasses.replace(base, shots=s, backbone=b, conv=c))
        for s in shots
        for b in backbones
        for c in convs
    ]


def is_finished(run_dir: Path) -> bool:
    """Whether a run folder's last checkpoint reached its configured length."""
    folder = RunFolder(run_dir)
    if not folder.last.is_file():
        return False
    payload = load_checkpoint(folder.last)
    return bool(payload["step"] >= payload["config"]["meta_updates"])


def latest_evaluation(run_dir: Path) -> Path | None:
    """The most recently written evaluation CSV of a run, if any."""
    files = sorted(RunFolder(run_dir).evaluations.glob("*.csv"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def summarise(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """One row per run with its latest evaluation (runs without one are skipped)."""
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not RunFolder(run_dir).config.is_file():
            raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
        evaluation = latest_evaluation(run_dir)
        if evaluation is None:
            continue
        config = yaml.safe_load(RunFolder(run_dir).config.read_text())
        table = pd.read_csv(evaluation, dtype={"task": str}).set_index("task")["accuracy"]
        rows.append(
            {
                "run": run_dir.name,
                "backbone": config["backbone"],
                "depth": DEPTHS.get(config["backbone"], 0),
                "conv": config["conv"],
                "ways": config["ways"],
                "shots": config["shots"],
                "tasks": int(len(table) - 2),
                "accuracy": 100 * float(table["mean"]),
                "ci95": 100 * float(table["ci95"]),
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS)).sort_values(["shots", "conv", "depth"])


def write_report(
    table: pd.DataFrame, out: Path, references: pd.DataFrame | None = None
) -> list[Path]:
    """``curve.csv``, ``curve.md`` and ``curve.png`` (one panel per shot setting, one line
    per conv kind, accuracy in % with 95% intervals against depth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out / "curve.csv", out / "curve.md", out / "curve.png"
    table.to_csv(csv_path, index=False, float_format="%.4f")
    md_path.write_text(_markdown(table))
    shot_settings = sorted(table["shots"].unique()) or [1]
    figure, axes = plt.subplots(
        1, len(shot_settings), figsize=(5 * len(shot_settings), 4), squeeze=False
    )
    order = list(DEPTHS)  # backbones equally spaced, shallow to deep, as in the papers
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
            ref = references[references["shots"] == shots]
            axis.errorbar(
                [order.index(b) for b in ref["backbone"]],
                ref["accuracy"],
                yerr=ref["ci95"],
                marker="s",
                linestyle="--",
                capsize=3,
                color="grey",
                label="CloserLook MAML (reference)",
            )
        axis.set_xticks(range(len(order)))
        axis.set_xticklabels(order)
        ways = int(part["ways"].iloc[0]) if len(part) else 5
        axis.set_title(f"{ways}-way {shots}-shot")
        axis.set_xlabel("backbone (shallow to deep)")
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return [csv_path, md_path, png_path]


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table.itertuples(index=False):
        values = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
