"""The training step's meta-gradient equals independent MAML implementations (higher and
torch.func), second and first order, plain and ACDC-net; one update lowers the query loss."""

from __future__ import annotations

import higher
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind
from metaacdc.data import Episode
from metaacdc.maml.learner import MetaLearner, adapt_task
from metaacdc.training import meta_train_step

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")

LR, STEPS, SIZE = 0.1, 2, 16


def toy_tasks(count: int = 2, ways: int = 3) -> list[Episode]:
    generator = torch.Generator().manual_seed(1)
    tasks = []
    for _ in range(count):
        labels = torch.arange(ways).repeat(2)
        tasks.append(
            Episode(
                torch.randn(2 * ways, 3, SIZE, SIZE, generator=generator),
                labels,
                torch.randn(2 * ways, 3, SIZE, SIZE, generator=generator),
                labels,
                torch.arange(ways),
            )
        )
    return tasks


def tiny_model(conv: str) -> torch.nn.Module:
    torch.manual_seed(3)
    return create_backbone("conv4", conv_kind(conv, atom_drop=0.0), num_classes=3, image_size=SIZE)


def project_gradients(conv: str, first_order: bool) -> list[torch.Tensor]:
    model = tiny_model(conv)
    learner = MetaLearner(model, LR, first_order)
    frozen = torch.optim.SGD(learner.parameters(), lr=0.0)
    meta_train_step(learner, toy_tasks(), frozen, STEPS, torch.device("cpu"))
    return [p.grad.clone() for p in model.parameters()]


def higher_gradients(conv: str, first_order: bool) -> list[torch.Tensor]:
    model = tiny_model(conv)
    for task in toy_tasks():
        fmodel = higher.monkeypatch(model, copy_initial_weights=False)
        params = list(fmodel.parameters())
        for _ in range(STEPS):
            loss = F.cross_entropy(fmodel(task.support_x, params=params), task.support_y)
            grads = torch.autograd.grad(loss, params, create_graph=not first_order)
            params = [p - LR * (g.detach() if first_order else g) for p, g in zip(params, grads)]
        F.cross_entropy(fmodel(task.query_x, params=params), task.query_y).backward()
    return [p.grad.clone() for p in model.parameters()]


def func_gradients(conv: str, first_order: bool) -> list[torch.Tensor]:
    model = tiny_model(conv)
    names = [n for n, _ in model.named_parameters()]
    initial = list(model.parameters())
    total = [torch.zeros_like(p) for p in initial]
    for task in toy_tasks():
        params = dict(zip(names, initial))
        for _ in range(STEPS):
            logits = functional_call(model, params, (task.support_x,), tie_weights=True)
            loss = F.cross_entropy(logits, task.support_y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
            params = {
                n: p - LR * (g.detach() if first_order else g)
                for (n, p), g in zip(params.items(), grads)
            }
        query = functional_call(model, params, (task.query_x,), tie_weights=True)
        for t, g in zip(total, torch.autograd.grad(F.cross_entropy(query, task.query_y), initial)):
            t += g
    return total


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("conv", ["plain", "acdc-net"])
def test_meta_gradient_equals_higher_and_torch_func(conv: str, first_order: bool) -> None:
    # float32 agreement: the project's query pass runs channels-last, which sums in another
    # order; the gradients are of order 1 (the conv biases before batch norm are ~0)
    ours = project_gradients(conv, first_order)
    for reference in (higher_gradients(conv, first_order), func_gradients(conv, first_order)):
        assert len(reference) == len(ours)
        for got, want in zip(ours, reference):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_second_order_differs_from_first_order() -> None:
    second, first = project_gradients("plain", False), project_gradients("plain", True)
    assert any(not torch.allclose(a, b) for a, b in zip(second, first))


def query_loss_after_adaptation(learner: MetaLearner, tasks: list[Episode]) -> float:
    total = 0.0
    for task in tasks:
        task_learner = learner.task_learner(first_order=True, detached=True)
        for _ in range(STEPS):
            task_learner.adapt(
                F.cross_entropy(task_learner.support_logits(task.support_x), task.support_y)
            )
        with torch.no_grad():
            total += F.cross_entropy(task_learner(task.query_x), task.query_y).item()
    return total


@pytest.mark.parametrize("conv", ["plain", "acdc-net"])
def test_one_meta_update_lowers_query_loss(conv: str) -> None:
    tasks = toy_tasks(4)
    learner = MetaLearner(tiny_model(conv), LR, first_order=False)
    before = query_loss_after_adaptation(learner, tasks)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    meta_train_step(learner, tasks, optimizer, STEPS, torch.device("cpu"))
    assert query_loss_after_adaptation(learner, tasks) < before


def test_second_order_query_runs_channels_last_and_hands_back_contiguous_gradients() -> None:
    task = toy_tasks(1)[0]
    learner = MetaLearner(tiny_model("plain"), LR, first_order=False)
    task_learner = learner.task_learner()
    assert task_learner.layouts.support == torch.contiguous_format
    assert task_learner.layouts.query == torch.channels_last
    adapt_task(task_learner, task.support_x, task.support_y, STEPS)
    logits = task_learner(task.query_x)
    seen: list[bool] = []
    for weight in task_learner.head.parameters():
        if weight.dim() == 4:  # runs after the learner's own hook: what the inner loop gets
            weight.register_hook(lambda grad: seen.append(grad.is_contiguous()))
    F.cross_entropy(logits, task.query_y).backward()
    assert len(seen) == 4 and all(seen)
