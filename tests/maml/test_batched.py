"""The batched engine's meta-gradient equals the learn2learn engine's (float64), for every
conv kind on Conv4 and ResNet10, first and second order, Meta-SGD and head-only; a shared
tensor under Meta-SGD equals an independent per-task loop; a meta-update syncs nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind
from metaacdc.data import Episode
from metaacdc.errors import ConfigError
from metaacdc.maml.batched import BatchedMAML, stack_tasks
from metaacdc.maml.learner import MetaLearner, adapt_task
from metaacdc.runtime.fast_paths import cpu_fast_paths
from metaacdc.training.step import meta_train_step

LR, STEPS, WAYS = 0.1, 2, 3
SIZE = {"conv4": 16, "resnet10": 8}
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def episodes(count: int, size: int, ways: int = WAYS, shots: int = 1, queries: int = 2) -> list:
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(ways)

    def images(n: int) -> Tensor:
        return torch.randn(n, 3, size, size, generator=generator, dtype=torch.float64)

    return [
        Episode(
            images(ways * shots),
            labels.repeat_interleave(shots),
            images(ways * queries),
            labels.repeat_interleave(queries),
            labels,
        )
        for _ in range(count)
    ]


def learner(
    backbone: str,
    conv: str,
    first_order: bool,
    adapt: str = "all",
    meta_sgd: bool = False,
    atom_drop: float = 0.0,
) -> MetaLearner:
    torch.manual_seed(3)
    options: dict[str, Any] = {"atom_drop": atom_drop}
    if "-g-" in conv:
        options["group_size"] = 16
    model = create_backbone(
        backbone, conv_kind(conv, **options), num_classes=WAYS, image_size=SIZE[backbone]
    )
    meta = MetaLearner(model.double(), LR, first_order, adapt, meta_sgd)
    if meta_sgd:  # step sizes of their own, so that a mix-up of them shows
        generator = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for lrs in meta.wrapped.lrs:
                lrs.mul_(torch.rand(lrs.shape, generator=generator, dtype=lrs.dtype) + 0.5)
    return meta.train()


def l2l_gradients(
    meta: MetaLearner, tasks: list[Episode], seeds: Sequence[int] | None = None
) -> list[Tensor | None]:
    """The learn2learn engine's meta-gradient: the loop of ``meta_train_step`` (each task
    under its seed), with the loss in the model's dtype (the step computes it in float32,
    for autocast) and on its textbook path (the CPU fast paths change the rounding only)."""
    meta.zero_grad(set_to_none=True)
    for task, seed in zip(tasks, [None] * len(tasks) if seeds is None else seeds):
        forked = contextlib.nullcontext() if seed is None else torch.random.fork_rng(devices=[])
        with forked, cpu_fast_paths(False):
            if seed is not None:
                torch.manual_seed(seed)
            task_learner = meta.task_learner()
            adapt_task(task_learner, task.support_x, task.support_y, STEPS)
            F.cross_entropy(task_learner(task.query_x), task.query_y).backward()
    return [None if p.grad is None else p.grad.clone() for p in meta.parameters()]


def batched_gradients(
    meta: MetaLearner, tasks: list[Episode], seeds: Sequence[int] | None = None
) -> list[Tensor | None]:
    meta.zero_grad(set_to_none=True)
    BatchedMAML(meta).meta_gradient(tasks, STEPS, seeds)
    return [None if p.grad is None else p.grad.clone() for p in meta.parameters()]


def assert_same_gradients(got: list[Tensor | None], want: list[Tensor | None]) -> None:
    """Equal to 1e-6 relative, entry by entry; entries whose true value is 0 (a conv bias
    before batch norm) are rounding noise, compared to 1e-9 of the largest entry."""
    assert len(got) == len(want)
    scale = max(float(w.abs().max()) for w in want if w is not None)
    for index, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None), f"parameter {index}: gradient presence differs"
        if g is not None and w is not None:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9 * scale)


KINDS = ["plain", "acdc-net", "acdc-g-net", "ks-net"]
CASES = [
    pytest.param(backbone, kind, order, id=f"{backbone}-{kind}-{order}")
    for backbone in SIZE
    for kind in KINDS
    for order in ("second", "first")
]


@pytest.mark.parametrize(("backbone", "conv", "order"), CASES)
def test_meta_gradient_equals_learn2learn(backbone: str, conv: str, order: str) -> None:
    meta = learner(backbone, conv, first_order=order == "first")
    tasks = episodes(3, SIZE[backbone])
    assert_same_gradients(batched_gradients(meta, tasks), l2l_gradients(meta, tasks))


@pytest.mark.parametrize(
    ("backbone", "conv", "first_order", "adapt", "meta_sgd"),
    [
        ("conv4", "plain", False, "all", True),
        ("conv4", "acdc-layer", True, "all", True),
        ("conv4", "acdc-net", False, "head", False),
        ("conv4", "plain", False, "head", True),
        ("resnet10", "plain", True, "all", True),
        ("resnet10", "acdc-net", True, "head", False),
    ],
    ids=lambda value: str(value),
)
def test_meta_sgd_and_head_only_equal_learn2learn(
    backbone: str, conv: str, first_order: bool, adapt: str, meta_sgd: bool
) -> None:
    meta = learner(backbone, conv, first_order, adapt, meta_sgd)
    tasks = episodes(3, SIZE[backbone])
    assert_same_gradients(batched_gradients(meta, tasks), l2l_gradients(meta, tasks))


def per_task_reference(meta: MetaLearner, tasks: list[Episode]) -> list[Tensor | None]:
    """Meta-SGD by hand, one task at a time: one tensor per shared parameter, updated once
    per step by its step sizes, read by every module holding it."""
    meta.zero_grad(set_to_none=True)
    model = meta.model
    names = [name for name, _ in model.named_parameters()]
    for task in tasks:
        params = dict(model.named_parameters())
        for _ in range(STEPS):
            logits = functional_call(model, params, (task.support_x,), tie_weights=True)
            loss = F.cross_entropy(logits, task.support_y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {
                name: p - lr * g
                for (name, p), lr, g in zip(params.items(), meta.wrapped.lrs, grads)
            }
        query = functional_call(model, params, (task.query_x,), tie_weights=True)
        F.cross_entropy(query, task.query_y).backward()
    assert len(names) == len(list(meta.wrapped.lrs))
    return [None if p.grad is None else p.grad.clone() for p in meta.parameters()]


@pytest.mark.parametrize("conv", ["acdc-net", "ks-net"])
def test_meta_sgd_updates_a_shared_tensor_once_for_all_its_layers(conv: str) -> None:
    # an independent per-task loop (the learn2learn engine agrees too since its Meta-SGD
    # step keeps shared tensors shared: tests/maml/test_meta_sgd.py)
    meta = learner("conv4", conv, first_order=False, meta_sgd=True)
    tasks = episodes(3, SIZE["conv4"])
    assert_same_gradients(batched_gradients(meta, tasks), per_task_reference(meta, tasks))


def test_sum_of_task_losses_and_hits_match_the_training_step() -> None:
    meta = learner("conv4", "plain", first_order=False)
    tasks = episodes(3, SIZE["conv4"])
    step = BatchedMAML(meta).meta_gradient(tasks, STEPS)
    meta.zero_grad()
    with cpu_fast_paths(False):
        stats = meta_train_step(meta, tasks, torch.optim.SGD(meta.parameters(), lr=0.0), STEPS, CPU)
    # the training step computes its loss in float32
    assert float(step.loss) == pytest.approx(stats.loss, rel=1e-6)
    assert float(step.task_losses.sum()) == pytest.approx(float(step.loss), rel=1e-12)
    assert step.queries == 2 * WAYS
    assert float(step.hits.sum()) / (3 * step.queries) == pytest.approx(stats.accuracy)


class _HostSyncs(TorchDispatchMode):
    """Records operators that read a tensor's value on the host."""

    SYNCS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket.__name__ in self.SYNCS:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_a_meta_update_reads_no_value_on_the_host() -> None:
    meta = learner("conv4", "acdc-net", first_order=False, atom_drop=0.2)
    engine = BatchedMAML(meta)
    tasks = episodes(3, SIZE["conv4"])
    batch = stack_tasks(tasks, CPU)
    engine.meta_gradient(batch, STEPS, [1, 2, 3])  # plans its atom-drop draws once
    with _HostSyncs() as syncs:
        engine.meta_gradient(batch, STEPS, [4, 5, 6])
    assert syncs.seen == []


def test_tasks_of_another_shape_are_refused() -> None:
    meta = learner("conv4", "plain", first_order=True)
    tasks = episodes(2, SIZE["conv4"]) + episodes(1, SIZE["conv4"], shots=2)
    with pytest.raises(ConfigError, match=r"task 2 has support_x of shape \(6, 3, 16, 16\)"):
        BatchedMAML(meta).meta_gradient(tasks, STEPS)
    with pytest.raises(ConfigError, match="2 task seeds for 3 tasks"):
        BatchedMAML(meta).meta_gradient(episodes(3, SIZE["conv4"]), STEPS, [1, 2])


class _ConvolutionDtypes(TorchDispatchMode):
    """Records the input dtypes of every ATen convolution (forward) run within."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.convolution.default:
            self.seen.update(a.dtype for a in args[:2])
        return func(*args, **(kwargs or {}))


def test_autocast_runs_the_convolutions_in_bfloat16_as_learn2learn_does() -> None:
    """Under autocast, vmap's batched convolution would skip the cast to bfloat16; the
    engine makes it, so every convolution runs in bfloat16 and the meta-gradient is the
    learn2learn engine's up to bfloat16 rounding (which batch norm over a few images
    amplifies: the two engines' differ by 18 % in norm, either one from float32's by 43 %)."""
    meta = learner("conv4", "plain", first_order=False).float()
    tasks = [
        Episode(*(t.float() if t.is_floating_point() else t for t in task))
        for task in episodes(3, SIZE["conv4"])
    ]
    convolutions = _ConvolutionDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = l2l_gradients(meta, tasks)
        with convolutions:
            got = batched_gradients(meta, tasks)
    assert convolutions.seen == {torch.bfloat16}
    flat = [torch.cat([g.flatten() for g in grads if g is not None]) for grads in (got, want)]
    assert float(F.cosine_similarity(flat[0], flat[1], dim=0)) > 0.95
