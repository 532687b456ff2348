"""Episode sampling speed from a memory-mapped cache, against one Conv4 MAML training step.

Prints episodes per second for 5-way 5-shot with 15 queries at 84 px, milliseconds per
5W1S and 5W5S episode (plain and with the training augmentation), the time of one Conv4
MAML training step on one such task (learn2learn: clone, 5 inner SGD steps at lr 0.01,
query loss backward, Adam step) and the ratio. Targets: sampling < 2% of a training step,
a 5W1S episode under 2 ms.

    .venv/bin/python scripts/bench_episodes.py [--episodes 200] [--steps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from metaacdc.data import EpisodeSampler, open_split, prepare, train_transform


def per_call_ms(function: Callable[[int], object], count: int) -> float:
    """Median-free mean time per call in milliseconds after one warm-up call."""
    function(0)
    start = time.perf_counter()
    for i in range(1, count + 1):
        function(i)
    return (time.perf_counter() - start) / count * 1e3


def maml_step_ms(device: torch.device, steps: int, episode_source: EpisodeSampler) -> float:
    """Mean time of one second-order MAML step of Conv4 on one 5W5S task."""
    import learn2learn as l2l

    from metaacdc.backbones import create_backbone

    model = create_backbone("conv4", "plain", num_classes=5, image_size=84).to(device)
    maml = l2l.algorithms.MAML(model, lr=0.01)
    optimiser = torch.optim.Adam(maml.parameters(), lr=1e-3)
    episode = episode_source.episode(0)
    tensors = [t.to(device) for t in episode[:4]]

    def step(_: int) -> None:
        support_x, support_y, query_x, query_y = tensors
        learner = maml.clone()
        for _ in range(5):
            learner.adapt(F.cross_entropy(learner(support_x), support_y))
        loss = F.cross_entropy(learner(query_x), query_y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return per_call_ms(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes timed per setting")
    parser.add_argument("--steps", type=int, default=5, help="MAML steps timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as out:
        prepare("synthetic", out, image_size=84, splits=["test"], progress=False)
        split = open_split(f"{out}/test", image_size=84)  # memory-mapped, as in training
        one = EpisodeSampler(split, ways=5, shots=1, queries=15, seed=0)
        five = EpisodeSampler(split, ways=5, shots=5, queries=15, seed=0)
        augmented = EpisodeSampler(split, 5, 5, 15, seed=0, transform=train_transform())
        rows = []
        for count in sorted({1, threads}):  # 1 thread: what each loader worker uses
            torch.set_num_threads(count)
            rows.append(
                (
                    count,
                    per_call_ms(one.episode, args.episodes),
                    per_call_ms(five.episode, args.episodes),
                    per_call_ms(augmented.episode, max(args.episodes // 4, 1)),
                )
            )
        torch.set_num_threads(threads)
        step = maml_step_ms(device, args.steps, five)
    print(f"torch {torch.__version__}; MAML on {device} with {threads} threads")
    for count, ms_1, ms_5, ms_aug in rows:
        print(f"sampling with {count} thread(s), 84px, 15 queries:")
        print(f"  5W1S episode:                {ms_1:8.2f} ms")
        print(f"  5W5S episode:                {ms_5:8.2f} ms  ({1e3 / ms_5:.0f} episodes/s)")
        print(f"  5W5S + train augmentation:   {ms_aug:8.2f} ms  ({1e3 / ms_aug:.0f} episodes/s)")
    print(f"Conv4 MAML step (1 5W5S task, 5 inner steps, 2nd order): {step:.1f} ms")
    _, ms_1, ms_5, ms_aug = rows[0]
    print(
        f"sampling / training step (1 thread): {ms_5 / step:.2%} plain, "
        f"{ms_aug / step:.2%} augmented (target < 2%); 5W1S {ms_1:.2f} ms (target < 2 ms)"
    )


if __name__ == "__main__":
    main()
