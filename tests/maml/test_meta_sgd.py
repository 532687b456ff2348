"""The learn2learn engine's Meta-SGD inner step (:func:`metaacdc.maml.learner.meta_sgd_step`)
on a tensor shared by several modules (an ACDC coefficient tensor, an anchored kernel): it
stays one tensor through adaptation, the meta-gradient equals the batched engine's, first and
second order; without shared tensors the meta-gradient is learn2learn's own, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaacdc.data import Episode
from metaacdc.maml.learner import MetaLearner, adapt_task
from metaacdc.runtime.fast_paths import cpu_fast_paths
from tests.maml.test_batched import (
    SIZE,
    STEPS,
    assert_same_gradients,
    batched_gradients,
    episodes,
    l2l_gradients,
    learner,
)

SHARED = [
    pytest.param(conv, order, id=f"{conv}-{order}")
    for conv in ("acdc-net", "ks-net")
    for order in ("second", "first")
]


pytestmark = pytest.mark.usefixtures("one_thread")


def holders(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter slot of ``module`` (``"submodule.name"``, a shared module under each
    of its names) and the tensor it holds."""
    return {
        f"{prefix}.{name}": param
        for prefix, submodule in module.named_modules(remove_duplicate=False)
        for name, param in submodule._parameters.items()
        if param is not None
    }


@pytest.mark.parametrize(("conv", "order"), SHARED)
def test_a_shared_tensor_stays_one_tensor_through_adaptation(conv: str, order: str) -> None:
    meta = learner("conv4", conv, first_order=order == "first", meta_sgd=True)
    stored = holders(meta.wrapped.module)
    shared = [
        [slot for slot in stored if stored[slot] is tensor]
        for tensor in meta.wrapped.module.parameters()
    ]
    shared = [slots for slots in shared if len(slots) > 1]
    assert shared, f"{conv} registers no tensor in several modules"
    task = episodes(1, SIZE["conv4"])[0]
    task_learner = meta.task_learner()
    for step in range(STEPS):  # learn2learn's update untied them at step 1, crashed at step 2
        before = holders(task_learner.head.module)
        adapt_task(task_learner, task.support_x, task.support_y, 1)
        adapted = holders(task_learner.head.module)
        for first, *others in shared:
            assert adapted[first] is not before[first], f"step {step}: {first} not updated"
            assert all(adapted[slot] is adapted[first] for slot in others), (step, first, others)
        assert len(list(task_learner.head.parameters())) == len(list(meta.wrapped.lrs))


@pytest.mark.parametrize(("conv", "order"), SHARED)
def test_meta_gradient_with_a_shared_tensor_equals_the_batched_engine(
    conv: str, order: str
) -> None:
    meta = learner("conv4", conv, first_order=order == "first", meta_sgd=True)
    tasks = episodes(3, SIZE["conv4"])
    assert_same_gradients(l2l_gradients(meta, tasks), batched_gradients(meta, tasks))


def learn2learn_gradients(meta: MetaLearner, tasks: list[Episode]) -> list[Tensor | None]:
    """The meta-gradient with learn2learn's own ``MetaSGD.adapt`` as the inner step."""
    meta.zero_grad(set_to_none=True)
    for task in tasks:
        with cpu_fast_paths(False):
            task_learner = meta.task_learner()
            for _ in range(STEPS):
                loss = F.cross_entropy(task_learner.support_logits(task.support_x), task.support_y)
                task_learner.head.adapt(loss, first_order=task_learner.first_order)
            F.cross_entropy(task_learner(task.query_x), task.query_y).backward()
    return [None if p.grad is None else p.grad.clone() for p in meta.parameters()]


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor")  # learn2learn's update
@pytest.mark.parametrize("order", ["second", "first"])
def test_without_shared_tensors_the_meta_gradient_is_learn2learns_bit_for_bit(order: str) -> None:
    meta = learner("conv4", "plain", first_order=order == "first", meta_sgd=True)
    tasks = episodes(2, SIZE["conv4"])
    ours, theirs = l2l_gradients(meta, tasks), learn2learn_gradients(meta, tasks)
    assert len(ours) == len(theirs)
    for got, want in zip(ours, theirs):
        assert got is not None and want is not None
        assert torch.equal(got, want)
