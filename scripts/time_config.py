"""Time a training configuration on this machine before committing to a long CPU run.

Measures the CPU seconds of a few training tasks (one meta-batch task each: adaptation,
query loss, meta-gradient) and a few evaluation tasks (``test_inner_steps`` first-order
steps, queries classified), with ``--threads`` torch threads (default 1), and projects the
whole run: ``meta_updates x meta_batch`` training tasks, ``val_tasks`` evaluation tasks at
every validation, and ``--test-tasks`` evaluation tasks for the test. Process CPU time is
used, not wall time, so that other programs on a shared machine do not inflate the figure;
with one thread on an otherwise idle core, wall time is about the CPU time.

    .venv/bin/python scripts/time_config.py configs/omniglot-5w1s.yaml [--acdc net]
        [--set meta_updates=100 image_size=32 ...] [--tasks 4] [--test-tasks 3000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from metaacdc.cli.options import conv_spec
from metaacdc.config import TrainConfig, build_config, resolve
from metaacdc.data import DataFacts, EpisodeSampler
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.experiment import build_model, evaluation_sampler, open_splits
from metaacdc.training.step import meta_train_step


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="YAML/TOML settings, as for metaacdc train")
    parser.add_argument("--acdc", default=None, help="override the conv kind: none, net, ...")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides")
    parser.add_argument("--tasks", type=int, default=4, help="tasks timed of each kind")
    parser.add_argument("--test-tasks", type=int, default=3000, help="test tasks projected")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser.parse_args()


def load(args: argparse.Namespace) -> TrainConfig:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    conv = conv_spec(args.acdc, None)
    if conv is not None:
        overrides["conv"] = conv
    return resolve(build_config(args.config, overrides, source="--set"))


def cpu_seconds(action: Any) -> float:
    start = time.process_time()
    action()
    return time.process_time() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    config = load(args)
    assert config.meta_updates is not None
    torch.manual_seed(config.seed)
    splits = open_splits(config, ("train", "val"))
    data = DataFacts.from_split(splits["train"])
    learner = MetaLearner(
        build_model(config, splits["train"].channels),
        config.inner_lr,
        bool(config.first_order),
        config.adapt,
        config.meta_sgd,
    )
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.meta_lr)
    sampler = EpisodeSampler(
        splits["train"], config.ways, config.shots, config.queries, config.seed
    )
    device = torch.device("cpu")
    learner.train()
    train = [
        cpu_seconds(
            lambda i=i: meta_train_step(
                learner, [sampler.episode(i)], optimizer, config.inner_steps, device
            )
        )
        for i in range(args.tasks)
    ]
    val_sampler = evaluation_sampler(config, splits["val"], data, seed=0)
    evaluation = cpu_seconds(
        lambda: evaluate(
            Learner(learner, config, data, device),
            val_sampler,
            args.tasks,
            inner_steps=config.test_inner_steps,
            progress=False,
        )
    )
    per_train = statistics.median(train[1:] or train)  # the first task warms up
    per_eval = evaluation / args.tasks
    update = per_train * config.meta_batch
    validations = math.ceil(config.meta_updates / config.val_every)
    train_min = config.meta_updates * update / 60
    val_min = validations * config.val_tasks * per_eval / 60
    test_min = args.test_tasks * per_eval / 60
    print(
        f"{config.backbone} {config.conv} {config.dataset} {config.ways}w{config.shots}s "
        f"{config.image_size}px, {'first' if config.first_order else 'second'} order, "
        f"{args.threads} thread(s), CPU seconds:\n"
        f"  training task {per_train:.3f} s (timed: {', '.join(f'{t:.3f}' for t in train)})"
        f", meta-update of {config.meta_batch} tasks {update:.2f} s\n"
        f"  evaluation task ({config.test_inner_steps} steps) {per_eval:.3f} s\n"
        f"  projected: training {config.meta_updates} updates {train_min:.1f} min + "
        f"{validations} validations {val_min:.1f} min = {train_min + val_min:.1f} min; "
        f"test on {args.test_tasks} tasks {test_min:.1f} min"
    )


if __name__ == "__main__":
    main()
