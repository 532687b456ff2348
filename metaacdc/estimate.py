"""Up-front estimates of a run's GPU time and peak GPU memory, from counts taken on the CPU.

Nothing here runs on a GPU; the numbers are estimates from a stated cost model:

* **work**: the FLOPs of one forward of a batch (``torch.utils.flop_counter``, ACDC kernel
  reconstruction counted once per batch), a backward counted as 2 forwards, and a
  second-order meta-gradient as the inner loop's forward+backward once more. A training
  task is ``inner_steps`` forward+backward passes on the support set plus one on the
  queries; an evaluation task ``test_inner_steps`` on the support plus one query forward.
* **time** per task: the larger of its FLOPs at :data:`GPU_TFLOPS` and its count of
  PyTorch operator calls at :data:`OP_OVERHEAD_S` each (small models on GPUs are bound by
  launching kernels, not by arithmetic). Training + validation + test evaluation.
* **memory**: the bytes autograd saves for backward in one training-mode forward (counted
  with ``saved_tensors_hooks``, each storage once), for the largest batch a task keeps
  alive (the queries; with second order, every inner step's support graph, counted twice
  for the double backward, as well), plus parameters, gradients and Adam state, plus
  :data:`CUDA_OVERHEAD_BYTES` for the CUDA context and cuDNN workspaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from metaacdc.config import TrainConfig, resolve
from metaacdc.experiment import build_model
from metaacdc.summary import forward_flops

#: Assumed sustained throughput of one GPU: an A100 trains ResNet-50 in TF32 (PyTorch's
#: default for convolutions) at about 800 images/s x 24.6 GFLOP (forward + backward), i.e.
#: about 20 TFLOP/s; MAML's batches of 5 to 80 images do not do better.
GPU_TFLOPS = 20.0
#: Assumed cost of one eager PyTorch operator call on a GPU (Python dispatch + kernel
#: launch, typically 5 to 20 us).
OP_OVERHEAD_S = 10e-6
#: Assumed fixed GPU memory: CUDA context, cuDNN workspaces, allocator slack.
CUDA_OVERHEAD_BYTES = 1.5 * 2**30


@dataclass(frozen=True)
class ModelCosts:
    """Per-forward costs of one model, affine in the batch size ``b``: ``fixed + b *
    per_image`` (FLOPs and saved bytes); ``ops`` operator calls per forward."""

    flops_fixed: float
    flops_per_image: float
    saved_fixed: float
    saved_per_image: float
    ops: int
    parameters: int
    parameter_tensors: int

    def flops(self, batch: int) -> float:
        return self.flops_fixed + batch * self.flops_per_image

    def saved(self, batch: int) -> float:
        return self.saved_fixed + batch * self.saved_per_image


@dataclass(frozen=True)
class RunEstimate:
    """Estimated GPU cost of one run (training, validation and the test evaluation)."""

    config: TrainConfig
    train_tflop: float
    eval_tflop: float
    hours: float
    peak_gib: float


class _OpCounter(TorchDispatchMode):
    """Counts operator calls reaching the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> float:
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return float(sum(storages.values()))


def model_costs(model: nn.Module, channels: int, image_size: int) -> ModelCosts:
    """Measure ``model``'s :class:`ModelCosts` with batches of 2 and 4 images (CPU)."""
    small, large = (torch.zeros(b, channels, image_size, image_size) for b in (2, 4))
    flops = [float(forward_flops(model, image_size, channels, batch=b)) for b in (2, 4)]
    model.train()
    saved = [_saved_bytes(model, small), _saved_bytes(model, large)]
    counter = _OpCounter()
    with counter:
        model(small)
    params = [p for p in model.parameters() if p.requires_grad]
    per_image_flops, per_image_saved = (flops[1] - flops[0]) / 2, (saved[1] - saved[0]) / 2
    return ModelCosts(
        flops_fixed=max(flops[0] - 2 * per_image_flops, 0.0),
        flops_per_image=per_image_flops,
        saved_fixed=max(saved[0] - 2 * per_image_saved, 0.0),
        saved_per_image=per_image_saved,
        ops=counter.count,
        parameters=sum(p.numel() for p in params),
        parameter_tensors=len(params),
    )


def estimate_run(
    config: TrainConfig,
    costs: ModelCosts,
    test_tasks: int = 3000,
    tflops: float = GPU_TFLOPS,
    op_overhead_s: float = OP_OVERHEAD_S,
) -> RunEstimate:
    """The cost model of the module docstring applied to one resolved config."""
    config = resolve(config)
    assert config.meta_updates is not None and config.test_inner_steps is not None
    support = config.ways * config.shots
    order = 1 if config.first_order else 2  # second order: the inner loop once more
    inner_flops = config.inner_steps * 3 * costs.flops(support)
    train_task = order * inner_flops + 3 * costs.flops(config.ways * config.queries)
    # per inner step: forward + backward (2x) calls, and one update call per parameter tensor
    step_ops = 3 * costs.ops + costs.parameter_tensors
    train_ops = order * config.inner_steps * step_ops + 3 * costs.ops
    eval_query = config.ways * config.test_queries
    eval_task = config.test_inner_steps * 3 * costs.flops(support) + costs.flops(eval_query)
    eval_ops = config.test_inner_steps * step_ops + costs.ops
    validations = math.ceil(config.meta_updates / config.val_every)
    train_count = config.meta_updates * config.meta_batch
    eval_count = validations * config.val_tasks + test_tasks

    def seconds(flops: float, ops: float) -> float:
        return max(flops / (tflops * 1e12), ops * op_overhead_s)

    total_s = train_count * seconds(train_task, train_ops) + eval_count * seconds(
        eval_task, eval_ops
    )
    graphs = costs.saved(config.ways * config.queries)
    if not config.first_order:
        graphs += 2 * config.inner_steps * costs.saved(support)
    copies = 2 if config.first_order else config.inner_steps + 1  # adapted parameter copies
    parameter_bytes = 4 * costs.parameters * (4 + copies)  # weights, grad, Adam m and v
    return RunEstimate(
        config=config,
        train_tflop=train_count * train_task / 1e12,
        eval_tflop=eval_count * eval_task / 1e12,
        hours=total_s / 3600,
        peak_gib=(graphs + parameter_bytes + CUDA_OVERHEAD_BYTES) / 2**30,
    )


def estimate_grid(configs: list[TrainConfig], test_tasks: int = 3000) -> list[RunEstimate]:
    """:func:`estimate_run` for each config, measuring each distinct model once."""
    measured: dict[tuple[Any, ...], ModelCosts] = {}
    estimates = []
    for config in configs:
        config = resolve(config)
        assert config.image_size is not None
        channels = 1 if config.dataset == "omniglot" else 3
        key = (config.backbone, config.conv, config.atoms, config.group_size, config.image_size)
        if key not in measured:
            model = build_model(config, channels)
            measured[key] = model_costs(model, channels, config.image_size)
        estimates.append(estimate_run(config, measured[key], test_tasks))
    return estimates


def format_estimates(estimates: list[RunEstimate]) -> str:
    """The table ``metaacdc curve --estimate`` prints, with its assumptions and totals."""
    lines = [
        "ESTIMATE, not a measurement: GPU hours and peak GPU memory per run, from FLOPs and",
        "saved activations counted on the CPU (metaacdc/estimate.py), assuming a sustained",
        f"{GPU_TFLOPS:g} TFLOP/s, {OP_OVERHEAD_S * 1e6:g} us per PyTorch operator call and "
        f"{CUDA_OVERHEAD_BYTES / 2**30:g} GiB of CUDA overhead.",
        "",
        f"{'backbone':<9} {'conv':<12} {'shots':>5} {'order':>6} {'px':>4} "
        f"{'train TFLOP':>12} {'eval TFLOP':>11} {'GPU h':>7} {'peak GiB':>9}",
    ]
    for e in estimates:
        c = e.config
        lines.append(
            f"{c.backbone:<9} {c.conv:<12} {c.shots:>5} {'1st' if c.first_order else '2nd':>6} "
            f"{c.image_size:>4} {e.train_tflop:>12,.0f} {e.eval_tflop:>11,.0f} "
            f"{e.hours:>7.1f} {e.peak_gib:>9.1f}"
        )
    total = sum(e.hours for e in estimates)
    peak = max((e.peak_gib for e in estimates), default=0.0)
    lines += [
        "",
        f"total {total:.1f} GPU hours for {len(estimates)} runs; largest peak {peak:.1f} GiB",
    ]
    return "\n".join(lines)
