"""Learning speed: metaacdc's trainer against a minimal learn2learn MAML loop, at equal
meta-updates, on real Omniglot characters (issue 25).

Both sides read the same cache and the same training episodes (the trainer's
``EpisodeSampler``, episode ``update * meta_batch + t``), and are scored on the same frozen
held-out tasks (600 by default, 20-way and 5-way 1-shot from the test split) after each
reported number of meta-updates. The reference is the loop a user would write from
learn2learn's documentation: a Conv4 built from ``torch.nn`` with PyTorch's default
initialisation, images in [0, 1], ``l2l.algorithms.MAML``, query losses averaged over the
meta-batch, and test-time adaptation with the training steps. The project's side is
``metaacdc.train`` and ``metaacdc.evaluate`` on the run's last checkpoint. A 20-way model
scores 5-way tasks with the first five rows of its head, both sides alike.

Each difference between the two is measured by an *arm* that changes one setting of one
side, e.g.::

    .venv/bin/python scripts/bench_learning.py                      # ours vs reference
    .venv/bin/python scripts/bench_learning.py --arms reference reference+init=closerlook
    .venv/bin/python scripts/bench_learning.py --arms ours ours+test_inner_steps=10

``ours+KEY=VALUE`` overrides a ``TrainConfig`` field; ``reference+KEY=VALUE`` sets one of the
reference's :data:`REFERENCE_KNOBS`. Arms run in ``--jobs`` processes of one thread each.
The default settings (issue 25's): the 5-alphabet subset ``images_background_small1.zip``,
28 px, rotations as classes, Conv4, 20-way 1-shot, 5 queries per class, first order, 5 inner
steps at lr 0.1, meta-batch 8, Adam 1e-3, no augmentation.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import multiprocessing
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import learn2learn as l2l
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from metaacdc.api import load
from metaacdc.config import TrainConfig, build_config, resolve
from metaacdc.data import EpisodeSampler, open_split, prepare
from metaacdc.data.cache import is_complete
from metaacdc.evaluation import evaluate
from metaacdc.evaluation.evaluator import EvalResult
from metaacdc.training import train

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"
TEST_SEED = 7  # the frozen held-out tasks: episodes 0..tasks-1 of the test split

#: the issue's settings, shared by both sides (TrainConfig names)
SETTINGS: dict[str, object] = dict(
    backbone="conv4",
    dataset="omniglot",
    image_size=28,
    ways=20,
    shots=1,
    queries=5,
    first_order=True,
    inner_steps=5,
    inner_lr=0.1,
    meta_batch=8,
    meta_lr=1e-3,
    augment=False,
    device="cpu",
    workers=0,
    val_tasks=20,
)

#: the columns of the CSV that ``--csv`` appends to (docs/results/bench_learning*.csv)
COLUMNS = (
    "date",
    "commit",
    "arm",
    "seed",
    "updates",
    "ways",
    "accuracy",
    "ci95",
    "elapsed_s",
    "tasks",
    "cpu_s",
)

#: the reference loop's settings that an arm may change, with their defaults
REFERENCE_KNOBS: dict[str, object] = dict(
    init="pytorch",  # or "closerlook": kaiming-normal fan-out convs, zero biases (design §4)
    inputs="unit",  # or "normalised": the cache's mean/std, as the project's sampler gives
    loss="mean",  # or "sum": query losses summed over the meta-batch (design §5)
    test_steps=0,  # adaptation steps at test time; 0: the training steps
)


@dataclass(frozen=True)
class Arm:
    """One trained model series: a side and the settings it changes."""

    side: str  # "ours" or "reference"
    changes: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return "+".join([self.side, *(f"{k}={v}" for k, v in self.changes)])

    @classmethod
    def parse(cls, text: str) -> Arm:
        side, *changes = text.split("+")
        if side not in ("ours", "reference"):
            raise SystemExit(f"arm {text!r}: must start with 'ours' or 'reference'")
        pairs = []
        for change in changes:
            key, sep, value = change.partition("=")
            if not sep:
                raise SystemExit(f"arm {text!r}: {change!r} is not KEY=VALUE")
            if side == "reference" and key not in REFERENCE_KNOBS:
                raise SystemExit(f"arm {text!r}: reference knobs are {', '.join(REFERENCE_KNOBS)}")
            pairs.append((key, value))
        return cls(side, tuple(pairs))


def prepare_subset(cache: Path) -> Path:
    """The Omniglot subset's cache (characters split by the default seeded permutation,
    rotations as classes), written on first use."""
    if not all(is_complete(cache / split) for split in ("train", "val", "test")):
        with tempfile.TemporaryDirectory() as root:  # a root holding only the subset
            (Path(root) / SUBSET.name).symlink_to(SUBSET)
            prepare("omniglot", cache, root=root, image_size=28, rotations=True, progress=False)
    return cache


def ours_config(arm: Arm, cache: Path, updates: int, seed: int) -> TrainConfig:
    overrides = {**SETTINGS, "data": str(cache), "meta_updates": updates, "seed": seed}
    overrides["val_every"] = updates
    overrides.update({k: yaml.safe_load(v) for k, v in arm.changes})
    return resolve(build_config(None, overrides, source=f"arm {arm.name}"))


def test_samplers(cache: Path, ways: list[int], queries: int) -> dict[int, EpisodeSampler]:
    """The frozen held-out tasks, normalised with the training split's statistics."""
    train = open_split(cache / "train", image_size=28)
    test = open_split(cache / "test", image_size=28)
    return {
        w: EpisodeSampler(test, w, 1, queries, TEST_SEED, mean=train.meta.mean, std=train.meta.std)
        for w in ways
    }


# --------------------------------------------------------------------------- the reference


def reference_conv4(ways: int, init: str) -> nn.Module:
    """Conv4 as a user writes it: (conv3x3 -> BN (batch statistics) -> ReLU -> max-pool) x 4,
    then a linear head on the 64 features of a 28 px image."""
    layers: list[nn.Module] = []
    for index in range(4):
        layers += [
            nn.Conv2d(1 if index == 0 else 64, 64, 3, padding=1),
            nn.BatchNorm2d(64, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, ways))
    if init == "closerlook":
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.zeros_(model[-1].bias)
    elif init != "pytorch":
        raise SystemExit(f"init={init!r}: expected pytorch or closerlook")
    return model


class ReferenceInputs:
    """The sampler's normalised images turned back into what the reference feeds its model."""

    def __init__(self, mean: list[float], std: list[float], inputs: str) -> None:
        if inputs not in ("unit", "normalised"):
            raise SystemExit(f"inputs={inputs!r}: expected unit or normalised")
        self.unit = inputs == "unit"
        self.mean, self.std = (
            torch.tensor(mean).view(1, -1, 1, 1),
            torch.tensor(std).view(1, -1, 1, 1),
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.std + self.mean if self.unit else images


def _adapt(
    maml: l2l.algorithms.MAML, x: torch.Tensor, y: torch.Tensor, steps: int, ways: int | None
) -> nn.Module:
    """A clone of ``maml`` after ``steps`` SGD steps on the support loss of its first
    ``ways`` logits (``None``: all of them)."""
    learner = maml.clone()
    for _ in range(steps):
        learner.adapt(F.cross_entropy(learner(x)[:, :ways], y))
    return learner


@dataclass(frozen=True)
class Job:
    """What every arm is trained and scored on."""

    cache: Path
    points: tuple[int, ...]  # meta-updates at which the arm is scored
    seed: int
    tasks: int  # held-out tasks per score
    ways: tuple[int, ...]  # held-out task shapes
    test_queries: int


class ReferenceSeries:
    """The minimal learn2learn loop: trained on the project's training episodes, scored
    with its own adaptation."""

    def __init__(self, arm: Arm, job: Job) -> None:
        knobs = {**REFERENCE_KNOBS, **dict(arm.changes)}
        torch.manual_seed(job.seed)
        split = open_split(job.cache / "train", image_size=28)
        ways, shots, queries = (int(SETTINGS[k]) for k in ("ways", "shots", "queries"))
        self.sampler = EpisodeSampler(split, ways, shots, queries, job.seed)
        self.inputs = ReferenceInputs(split.meta.mean, split.meta.std, str(knobs["inputs"]))
        model = reference_conv4(ways, str(knobs["init"]))
        first_order, lr = bool(SETTINGS["first_order"]), float(SETTINGS["inner_lr"])
        self.maml = l2l.algorithms.MAML(model, lr=lr, first_order=first_order)
        self.optimizer = torch.optim.Adam(self.maml.parameters(), lr=float(SETTINGS["meta_lr"]))
        self.batch, self.steps = int(SETTINGS["meta_batch"]), int(SETTINGS["inner_steps"])
        self.test_steps = int(knobs["test_steps"]) or self.steps
        self.mean_loss = knobs["loss"] == "mean"
        self.done = 0

    def train_to(self, updates: int) -> None:
        for update in range(self.done, updates):
            self.optimizer.zero_grad()
            for t in range(self.batch):
                task = self.sampler.episode(update * self.batch + t)
                support_x, support_y, query_x, query_y = task[:4]
                learner = _adapt(self.maml, self.inputs(support_x), support_y, self.steps, None)
                loss = F.cross_entropy(learner(self.inputs(query_x)), query_y)
                (loss / self.batch if self.mean_loss else loss).backward()
            self.optimizer.step()
        self.done = updates

    def score(self, sampler: EpisodeSampler, tasks: int) -> EvalResult:
        accuracies = []
        for i in range(tasks):
            support_x, support_y, query_x, query_y = sampler.episode(i)[:4]
            x = self.inputs(support_x)
            learner = _adapt(self.maml, x, support_y, self.test_steps, sampler.ways)
            with torch.no_grad():
                predicted = learner(self.inputs(query_x))[:, : sampler.ways].argmax(1)
            accuracies.append((predicted == query_y).double().mean().item())
        return EvalResult.from_accuracies(accuracies)


class ProjectSeries:
    """``metaacdc.training.train`` into a temporary run folder, resumed at each point,
    scored by ``metaacdc.evaluation.evaluate`` on the run's last checkpoint."""

    def __init__(self, arm: Arm, job: Job, folder: Path) -> None:
        self.config = ours_config(arm, job.cache, job.points[-1], job.seed)
        self.run, self.done = folder / "run", 0

    def train_to(self, updates: int) -> None:
        train(
            self.config,
            self.run,
            resume=self.done > 0,
            stop_after=updates - self.done,
            progress=False,
            checkpoint_every_s=None,
        )
        self.done = updates
        self.learner = load(self.run / "checkpoints" / "last.pt", device="cpu")

    def score(self, sampler: EpisodeSampler, tasks: int) -> EvalResult:
        return evaluate(self.learner, sampler, tasks, progress=False)


def run_arm(arm: Arm, job: Job) -> list[dict]:
    """Train one arm to each point and score it there (in a worker process of one thread)."""
    torch.set_num_threads(1)
    samplers = test_samplers(job.cache, list(job.ways), job.test_queries)
    rows, started, cpu_started = [], time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        series = (
            ProjectSeries(arm, job, Path(folder))
            if arm.side == "ours"
            else ReferenceSeries(arm, job)
        )
        for point in job.points:
            series.train_to(point)
            for ways in job.ways:
                result = series.score(samplers[ways], job.tasks)
                rows.append(
                    dict(
                        arm=arm.name,
                        seed=job.seed,
                        updates=point,
                        ways=ways,
                        accuracy=100 * result.mean,
                        ci95=100 * result.ci95,
                        elapsed_s=round(time.perf_counter() - started, 1),
                        cpu_s=round(time.process_time() - cpu_started, 1),
                    )
                )
    return rows


# --------------------------------------------------------------------------- report


def table(rows: list[dict], arms: list[Arm], ways: list[int]) -> str:
    """Markdown: one row per number of meta-updates, one column per task shape and arm."""
    cells = {
        (r["arm"], r["updates"], r["ways"]): f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" for r in rows
    }
    columns = [(w, a.name) for w in ways for a in arms]
    lines = [
        "| meta-updates | " + " | ".join(f"{name} {w}-way" for w, name in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for updates in sorted({r["updates"] for r in rows}):
        found = [cells.get((name, updates, w), "") for w, name in columns]
        lines.append(f"| {updates} | " + " | ".join(found) + " |")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["ours", "reference"],
        help="ours[+KEY=VALUE...] or reference[+KNOB=VALUE...]",
    )
    parser.add_argument(
        "--points",
        nargs="+",
        type=int,
        default=[100, 200, 300],
        help="meta-updates at which the arms are scored",
    )
    parser.add_argument("--tasks", type=int, default=600, help="held-out tasks per score")
    parser.add_argument("--test-queries", type=int, default=5, help="held-out queries per class")
    parser.add_argument(
        "--ways", nargs="+", type=int, default=[20, 5], help="held-out task shapes (1-shot)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="arms trained at once, one thread each")
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "cache" / "bench-learning-omniglot-small1-28-rot"
    )
    parser.add_argument("--csv", type=Path, default=None, help="append the rows to this CSV")
    args = parser.parse_args()
    points = tuple(sorted(set(args.points)))
    if min(*points, args.tasks, args.jobs, args.test_queries) < 1:
        raise SystemExit("--points, --tasks, --jobs and --test-queries must be positive")
    if not all(2 <= w <= int(SETTINGS["ways"]) for w in args.ways):
        raise SystemExit(f"--ways: each between 2 and the trained {SETTINGS['ways']}")
    arms = [Arm.parse(text) for text in args.arms]
    cache = prepare_subset(args.cache)
    for arm in arms:  # refuse a bad override before any training
        if arm.side == "ours":
            ours_config(arm, cache, points[-1], args.seeds[0])
    started = time.perf_counter()
    jobs = [
        (arm, Job(cache, points, seed, args.tasks, tuple(args.ways), args.test_queries))
        for seed in args.seeds
        for arm in arms
    ]
    rows: list[dict] = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        min(args.jobs, len(jobs)), mp_context=context
    ) as pool:
        futures = {pool.submit(run_arm, arm, job): (arm, job.seed) for arm, job in jobs}
        for future in concurrent.futures.as_completed(futures):
            arm, seed = futures[future]
            rows += future.result()
            print(
                f"done: {arm.name} seed {seed} ({time.perf_counter() - started:.0f} s)", flush=True
            )
    for seed in args.seeds:
        print(f"\nseed {seed}: held-out 1-shot accuracy (%) ± 95% CI over {args.tasks} tasks")
        print(table([r for r in rows if r["seed"] == seed], arms, args.ways))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.csv is not None:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        new = pd.DataFrame(
            [{"date": stamp, "commit": _commit(), **r, "tasks": args.tasks} for r in rows]
        )
        old = [pd.read_csv(args.csv)] if args.csv.is_file() else []
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        merged = pd.concat([*old, new], ignore_index=True).reindex(columns=list(COLUMNS))
        merged.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
