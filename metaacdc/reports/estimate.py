"""Up-front estimates of a run's GPU time and peak GPU memory, from counts taken on the CPU.

Nothing here runs on a GPU; the numbers come from a cost model calibrated on one GPU:

* **work**: the FLOPs of one forward of a batch (``torch.utils.flop_counter``, ACDC kernel
  reconstruction counted once per batch), a backward counted as 2 forwards, and a
  second-order meta-gradient as the inner loop's forward+backward once more. A training
  task is ``inner_steps`` forward+backward passes on the support set plus one on the
  queries; an evaluation task ``test_inner_steps`` on the support plus one query forward.
* **operators**: the operator calls that launch work in one training task and in one
  evaluation task (views and other relabellings of memory left out), counted by running
  each once on the CPU on small random images: the count does not depend on image size.
  They run with the CPU fast paths off (:mod:`metaacdc.runtime.fast_paths`): a GPU runs
  neither the pool-first batch norm nor the fused double backward. The channels-last
  layouts, the one fast path a GPU also runs, are then left out too; their layout copies
  were 0.1 to 4% of a task's operators (Conv4 and ResNet10, both orders), well inside the
  spread of the calibration below.
* **time** per task: the larger of its FLOPs at :data:`GPU_TFLOPS` and its operators at
  :data:`OP_OVERHEAD_S` each (MAML's batches of 5 to 80 images leave a GPU waiting on the
  launches, not on arithmetic). Training + validation + test evaluation.
* **memory**: the bytes autograd saves for backward in one training-mode forward (counted
  with ``saved_tensors_hooks``, each storage once), for the largest batch a task keeps
  alive (the queries; with second order, every inner step's support graph, counted twice
  for the double backward, as well), plus parameters, gradients and Adam state, plus
  :data:`CUDA_OVERHEAD_BYTES` for the CUDA context.

Calibration (``scripts/bench_gpu_runs.py`` on an H100, ``docs/gpu-runs-h100*/``): every run
of the paper grid was bound by operator launches, at 14 to 59 us per operator, so the host
CPU sets the pace (a second start of the same kind of machine was 1.2 to 2.2x slower); the
most arithmetic, ResNet34 5-shot, sustained 44 TFLOP/s while still launch-bound.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from metaacdc.config import TrainConfig, resolve
from metaacdc.data import DataFacts, Episode
from metaacdc.reports.summary import forward_flops
from metaacdc.runs.experiment import build_model
from metaacdc.runtime.fast_paths import cpu_fast_paths

#: Assumed sustained arithmetic rate of one GPU for these batches. No measured run was
#: bound by it (see the module docstring), so it is an assumption: about a fifth of an
#: H100's dense TF32 rate, above the 44 TFLOP/s measured while launch-bound.
GPU_TFLOPS = 100.0
#: Cost of one launched operator (Python dispatch, autograd, kernel launch), fitted on an
#: H100: the estimated total of the 1-shot grid's 10 runs equals the mean of two measured
#: totals (63.2 and 91.4 GPU hours, on two starts of the machine). Per task it ranged from
#: 14 us (second-order Conv4/6 training) to 59 us (first-order ResNet training).
OP_OVERHEAD_S = 30e-6
#: Fixed GPU memory: the CUDA context, as measured on an H100 (0.51 GiB).
CUDA_OVERHEAD_BYTES = 0.5 * 2**30
#: Image size at which operators are counted.
_COUNTING_SIZE = 32
#: Operators that relabel memory without launching work.
_METADATA_OPS = frozenset(
    {
        "alias", "as_strided", "detach", "expand", "lift_fresh", "permute", "select",
        "slice", "split", "squeeze", "t", "transpose", "unbind", "unsqueeze", "view",
        "_reshape_alias", "_unsafe_view",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ModelCosts:
    """Per-forward costs of one model, affine in the batch size ``b``: ``fixed + b *
    per_image`` (FLOPs and saved bytes)."""

    flops_fixed: float
    flops_per_image: float
    saved_fixed: float
    saved_per_image: float
    parameters: int

    def flops(self, batch: int) -> float:
        return self.flops_fixed + batch * self.flops_per_image

    def saved(self, batch: int) -> float:
        return self.saved_fixed + batch * self.saved_per_image


@dataclass(frozen=True)
class TaskOps:
    """Operators that launch work in one training task and one evaluation task."""

    train: int
    eval: int


@dataclass(frozen=True)
class RunEstimate:
    """Estimated GPU cost of one run (training, validation and the test evaluation)."""

    config: TrainConfig
    train_tflop: float
    eval_tflop: float
    hours: float
    peak_gib: float


class _OpCounter(TorchDispatchMode):
    """Counts the operator calls reaching the dispatcher that launch work."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket.__name__ not in _METADATA_OPS:
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
    per_image_flops, per_image_saved = (flops[1] - flops[0]) / 2, (saved[1] - saved[0]) / 2
    return ModelCosts(
        flops_fixed=max(flops[0] - 2 * per_image_flops, 0.0),
        flops_per_image=per_image_flops,
        saved_fixed=max(saved[0] - 2 * per_image_saved, 0.0),
        saved_per_image=per_image_saved,
        parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def task_ops(config: TrainConfig, channels: int) -> TaskOps:
    """Count the operators of one training task (adaptation, query loss, meta-gradient) and
    one evaluation task (first-order adaptation, queries classified) of ``config``, each run
    once on the CPU on random images of :data:`_COUNTING_SIZE` px, with the CPU fast paths
    off (the plain path, as the module docstring says). The global random state is left as
    it was."""
    from metaacdc.maml.adaptation import Learner
    from metaacdc.maml.learner import MetaLearner
    from metaacdc.training.step import meta_train_step

    config = resolve(dataclasses.replace(config, image_size=_COUNTING_SIZE))
    assert config.first_order is not None
    cpu = torch.device("cpu")
    with torch.random.fork_rng(devices=[]), cpu_fast_paths(False):
        torch.manual_seed(0)
        model = build_model(config, channels)
        meta = MetaLearner(
            model, config.inner_lr, config.first_order, config.adapt, config.meta_sgd
        )
        labels = torch.arange(config.ways)
        shape = (channels, _COUNTING_SIZE, _COUNTING_SIZE)
        support = torch.randn(config.ways * config.shots, *shape)
        query = torch.randn(config.ways * config.queries, *shape)
        task = Episode(
            support,
            labels.repeat_interleave(config.shots),
            query,
            labels.repeat_interleave(config.queries),
            labels,
        )
        # the per-update optimizer step is not a task's: a step over no gradients
        idle = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
        meta.train()
        with _OpCounter() as train:
            meta_train_step(meta, [task], idle, config.inner_steps, cpu)
        facts = DataFacts("random", _COUNTING_SIZE, channels, (0.0,) * channels, (1.0,) * channels)
        learner = Learner(meta.eval(), config, facts, cpu)
        test_query = torch.randn(config.ways * config.test_queries, *shape)
        with _OpCounter() as evaluation:
            learner.predict(support, task.support_y, test_query)
    return TaskOps(train=train.count, eval=evaluation.count)


def estimate_run(
    config: TrainConfig,
    costs: ModelCosts,
    ops: TaskOps,
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
    eval_query = config.ways * config.test_queries
    eval_task = config.test_inner_steps * 3 * costs.flops(support) + costs.flops(eval_query)
    validations = math.ceil(config.meta_updates / config.val_every)
    train_count = config.meta_updates * config.meta_batch
    eval_count = validations * config.val_tasks + test_tasks

    def seconds(flops: float, launches: int) -> float:
        return max(flops / (tflops * 1e12), launches * op_overhead_s)

    total_s = train_count * seconds(train_task, ops.train) + eval_count * seconds(
        eval_task, ops.eval
    )
    return RunEstimate(
        config=config,
        train_tflop=train_count * train_task / 1e12,
        eval_tflop=eval_count * eval_task / 1e12,
        hours=total_s / 3600,
        peak_gib=peak_bytes(config, costs) / 2**30,
    )


def peak_bytes(config: TrainConfig, costs: ModelCosts) -> float:
    """The memory part of the cost model (module docstring) for one resolved config: the
    graphs a training task keeps alive, the parameters with their gradients, adapted copies
    and Adam state, and the CUDA context."""
    graphs = costs.saved(config.ways * config.queries)
    if not config.first_order:
        graphs += 2 * config.inner_steps * costs.saved(config.ways * config.shots)
    copies = 2 if config.first_order else config.inner_steps + 1  # adapted parameter copies
    parameter_bytes = 4 * costs.parameters * (4 + copies)  # weights, grad, Adam m and v
    return graphs + parameter_bytes + CUDA_OVERHEAD_BYTES


def _channels(config: TrainConfig) -> int:
    return 1 if config.dataset == "omniglot" else 3


def _measured(config: TrainConfig, measured: dict[tuple[Any, ...], ModelCosts]) -> ModelCosts:
    """The :class:`ModelCosts` of a resolved config's model, measured once per distinct
    model and image size (``measured`` keeps them)."""
    assert config.image_size is not None
    key = (config.backbone, config.conv, config.atoms, config.group_size, config.image_size)
    if key not in measured:
        model = build_model(config, _channels(config))
        measured[key] = model_costs(model, _channels(config), config.image_size)
    return measured[key]


def estimate_peaks(configs: list[TrainConfig]) -> list[float]:
    """The estimated peak GPU memory (GiB) of each config, as :func:`estimate_grid` gives
    it, without counting operators: that count, needed only for time, takes tens of
    seconds per model on a CPU, where the memory part takes a few (``curve --jobs auto``
    asks this before it starts anything)."""
    measured: dict[tuple[Any, ...], ModelCosts] = {}
    peaks = []
    for config in configs:
        config = resolve(config)
        peaks.append(peak_bytes(config, _measured(config, measured)) / 2**30)
    return peaks


def estimate_grid(configs: list[TrainConfig], test_tasks: int = 3000) -> list[RunEstimate]:
    """:func:`estimate_run` for each config, measuring each distinct model and counting
    each distinct task once."""
    measured: dict[tuple[Any, ...], ModelCosts] = {}
    counted: dict[tuple[Any, ...], TaskOps] = {}
    estimates = []
    for config in configs:
        config = resolve(config)
        channels = _channels(config)
        model_key = (config.backbone, config.conv, config.atoms, config.group_size)
        task_key = (
            *model_key,
            *(config.first_order, config.inner_steps, config.test_inner_steps),
            *(config.adapt, config.meta_sgd),
            *(config.ways, channels),
        )
        if task_key not in counted:
            counted[task_key] = task_ops(config, channels)
        costs = _measured(config, measured)
        estimates.append(estimate_run(config, costs, counted[task_key], test_tasks))
    return estimates


def format_estimates(estimates: list[RunEstimate]) -> str:
    """The table ``metaacdc curve --estimate`` prints, with its assumptions and totals."""
    lines = [
        "ESTIMATE, not a measurement: GPU hours and peak GPU memory per run, from FLOPs,",
        "operators and saved activations counted on the CPU (metaacdc/estimate.py), at",
        f"{OP_OVERHEAD_S * 1e6:g} us per launched operator (fitted on one H100, where every "
        "run was launch-bound),",
        f"{GPU_TFLOPS:g} TFLOP/s and {CUDA_OVERHEAD_BYTES / 2**30:g} GiB of CUDA context.",
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
