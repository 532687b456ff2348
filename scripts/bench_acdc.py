"""Forward+backward time of ResNet18 with ACDC-net (m=8) against plain convolutions.

Both are measured in the same run, interleaved, on the same batch of 20 images at 84 px;
the ratio ACDC/plain is what the target (<= 1.15x on CPU) refers to.

    .venv/bin/python scripts/bench_acdc.py [--batch 20] [--image-size 84] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--atoms", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    models = {
        "plain": create_backbone("resnet18", "plain", image_size=args.image_size),
        "acdc-net": create_backbone(
            "resnet18", conv_kind("acdc-net", atoms=args.atoms), image_size=args.image_size
        ),
    }
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 5, (args.batch,), device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.to(device).train()
        for _ in range(3):  # warm-up
            step_seconds(model, x, y)
    for _ in range(args.repeats):
        for name, model in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(step_seconds(model, x, y))
            if device.type == "cuda":
                torch.cuda.synchronize()

    print(
        f"ResNet18, batch {args.batch} x {args.image_size}px, forward+backward, {device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"  {name:9s} {median * 1000:8.1f} ms/batch")
    print(f"  ratio acdc-net/plain: {medians['acdc-net'] / medians['plain']:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
