"""How long an evaluation pool takes to start, first and again in one process.

Evaluates 2 tasks of an untrained Conv4 on 32 px synthetic images with ``processes=2``
(``metaacdc.evaluation.pool``) ``--rounds`` times in one process, then once in this process
alone: the first pool pays the fork server's imports, every later one only the forks. What
`metaacdc curve` gains, evaluating run after run in one process.

    .venv/bin/python scripts/time_pool_start.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from metaacdc.config import TrainConfig, resolve
from metaacdc.data import DataFacts, EpisodeSampler, synthetic_split
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.experiment import build_model


def tiny_learner() -> tuple[Learner, EpisodeSampler]:
    """An untrained Conv4 learner and 5-way 1-shot synthetic test tasks for it."""
    config = resolve(TrainConfig(image_size=32, synthetic_images_per_class=12, test_queries=4))
    split = synthetic_split("test", 32, 12)
    model = build_model(config, split.channels)
    meta = MetaLearner(model, config.inner_lr, bool(config.first_order), config.adapt, False)
    learner = Learner(meta, config, DataFacts.from_split(split), torch.device("cpu"))
    return learner, EpisodeSampler(split, 5, 1, 4, seed=0, mean=split.meta.mean, std=split.meta.std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="pools started one after another")
    args = parser.parse_args()
    learner, tasks = tiny_learner()
    for round_ in range(1, args.rounds + 1):
        start = time.perf_counter()
        evaluate(learner, tasks, 2, processes=2, progress=False)
        print(f"pool {round_} (2 processes, 2 tasks): {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    evaluate(learner, tasks, 2, processes=1, progress=False)
    print(f"this process alone (2 tasks): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
