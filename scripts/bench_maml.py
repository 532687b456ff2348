"""MAML speed: the project's training step and evaluator against plain learn2learn loops.

Both sides use the same backbone, data, tasks and settings and are measured in the same run:

* training: tasks/s of ``metaacdc.training.meta_train_step`` against the loop of
  learn2learn's own MAML example (clone, adapt, query loss backward per task, gradients
  averaged, one Adam step), written here;
* evaluation: tasks/s of ``metaacdc.evaluation.evaluate`` against a sequential learn2learn
  loop (clone, first-order adapt, classify queries), and the time 3,000 tasks would take;
* memory: peak resident memory of a process doing only training steps, for each side
  (CUDA: peak allocated memory).

Targets (CPU): training >= 1.2x the reference, evaluation >= 2x, 3,000 Conv4 5W1S tasks at
84 px <= 15 min, training memory <= 1.2x the reference.

    .venv/bin/python scripts/bench_maml.py [--backbone conv4] [--image-size 84] [--shots 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from metaacdc.backbones import create_backbone
from metaacdc.data import EpisodeSampler, synthetic_split
from metaacdc.maml.l2l import learn2learn as l2l
from metaacdc.maml.learner import MetaLearner
from metaacdc.training import meta_train_step


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--conv", default="plain")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--updates", type=int, default=3, help="meta-updates timed per side")
    parser.add_argument("--eval-tasks", type=int, default=20, help="tasks timed per side")
    parser.add_argument("--only", choices=["reference", "project"], help=argparse.SUPPRESS)
    return parser.parse_args()


def setup(args: argparse.Namespace, split: str = "train") -> tuple[torch.nn.Module, EpisodeSampler]:
    torch.manual_seed(0)
    model = create_backbone(args.backbone, args.conv, image_size=args.image_size)
    data = synthetic_split(split, args.image_size, images_per_class=20)
    queries = 16 if split == "train" else 15
    return model, EpisodeSampler(data, 5, args.shots, queries, seed=0)


def reference_update(maml, optimizer, tasks, steps: int) -> None:
    """learn2learn's example loop (examples/vision/maml_miniimagenet.py pattern)."""
    optimizer.zero_grad()
    for task in tasks:
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(task.support_x), task.support_y))
        F.cross_entropy(learner(task.query_x), task.query_y).backward()
    for p in maml.parameters():
        p.grad.data.mul_(1.0 / len(tasks))
    optimizer.step()


def train_rate(args: argparse.Namespace, side: str) -> float:
    model, sampler = setup(args)
    tasks = [sampler.episode(i) for i in range(args.meta_batch)]
    if side == "reference":
        maml = l2l.algorithms.MAML(model, lr=0.01, first_order=args.first_order)
        optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)

        def update() -> None:
            reference_update(maml, optimizer, tasks, args.inner_steps)
    else:
        learner = MetaLearner(model, 0.01, args.first_order)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)

        def update() -> None:
            meta_train_step(learner, tasks, optimizer, args.inner_steps, torch.device("cpu"))

    update()  # warm-up
    start = time.perf_counter()
    for _ in range(args.updates):
        update()
    return args.updates * args.meta_batch / (time.perf_counter() - start)


def eval_rates(args: argparse.Namespace) -> tuple[float, float]:
    from metaacdc.api import Learner
    from metaacdc.config import TrainConfig, resolve
    from metaacdc.evaluation import evaluate

    model, sampler = setup(args, "test")
    config = resolve(
        TrainConfig(
            backbone=args.backbone,
            conv=args.conv,
            shots=args.shots,
            image_size=args.image_size,
            first_order=True,
        )
    )
    data = {
        "source": "synthetic",
        "image_size": args.image_size,
        "channels": 3,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "inverted": False,
    }
    learner = Learner(MetaLearner(model, 0.01, True), config, data, torch.device("cpu"))
    maml = l2l.algorithms.MAML(model, lr=0.01, first_order=True)

    def reference() -> None:
        for i in range(args.eval_tasks):
            task = sampler.episode(i)
            clone = maml.clone()
            for _ in range(args.inner_steps):
                clone.adapt(F.cross_entropy(clone(task.support_x), task.support_y))
            with torch.no_grad():
                (clone(task.query_x).argmax(1) == task.query_y).float().mean()

    rates = []
    for run in (reference, lambda: evaluate(learner, sampler, args.eval_tasks, progress=False)):
        start = time.perf_counter()
        run()
        rates.append(args.eval_tasks / (time.perf_counter() - start))
    return rates[0], rates[1]


def peak_memory_mb(side: str) -> float:
    """Peak RSS of a fresh process that only runs training steps for ``side``."""
    command = [sys.executable, __file__, *sys.argv[1:], "--only", side]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(json.loads(output.strip().splitlines()[-1])["peak_mb"])


def main() -> None:
    args = options()
    if args.only:  # child process of peak_memory_mb
        train_rate(args, args.only)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"peak_mb": peak}))
        return
    order = "first" if args.first_order else "second"
    print(
        f"{args.backbone} ({args.conv}), {args.image_size}px, 5-way {args.shots}-shot, "
        f"{args.inner_steps} inner steps, {order} order, meta-batch {args.meta_batch}, "
        f"{torch.get_num_threads()} threads"
    )
    reference, project = train_rate(args, "reference"), train_rate(args, "project")
    print(
        f"training   reference {reference:6.2f} tasks/s  project {project:6.2f} tasks/s  "
        f"ratio {project / reference:.2f} (target >= 1.2)"
    )
    ref_eval, project_eval = eval_rates(args)
    print(
        f"evaluation reference {ref_eval:6.2f} tasks/s  project {project_eval:6.2f} tasks/s  "
        f"ratio {project_eval / ref_eval:.2f} (target >= 2); 3,000 tasks: "
        f"{3000 / project_eval / 60:.1f} min (target <= 15)"
    )
    ref_mem, project_mem = peak_memory_mb("reference"), peak_memory_mb("project")
    print(
        f"peak memory (process RSS) reference {ref_mem:.0f} MB  project {project_mem:.0f} MB  "
        f"ratio {project_mem / ref_mem:.2f} (target <= 1.2)"
    )


if __name__ == "__main__":
    main()
