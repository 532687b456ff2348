"""What a task copy's inner loop does to the weights, against expectations computed by hand:
head-only adaptation (ANIL) moves the head by SGD on the backbone's fixed features and leaves
the backbone's tensors as they were, in a meta-learner's task copy (float64, Conv4 at 16 px,
3-way) and in the adaptation API (a saved 32 px run); a Meta-SGD inner step is
``θ − α ⊙ ∇θ`` with the learned per-parameter step sizes ``α``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaacdc.api import load
from metaacdc.maml.learner import InLayout, adapt_task
from metaacdc.runtime.fast_paths import cpu_fast_paths
from tests.maml.test_batched import LR, SIZE, STEPS, episodes, learner
from tests.tiny_runs import evaluation_episodes, make_run, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def prefixed(name: str) -> Callable[[str], str]:
    """An ``assert_close`` message: its own, after ``name``."""
    return lambda message: f"{name}: {message}"


# ------------------------------------------------------------------- head only (ANIL)


def hand_adapted_head(
    features: nn.Module, head: nn.Linear, x: Tensor, y: Tensor, steps: int, lr: float
) -> tuple[Tensor, Tensor]:
    """ANIL by hand: ``steps`` SGD steps on the head's weight and bias alone, the features
    of ``x`` computed by the fixed backbone."""
    weight: Tensor = head.weight
    bias: Tensor = head.bias
    for _ in range(steps):
        loss = F.cross_entropy(F.linear(features(x), weight, bias), y)
        grad_weight, grad_bias = torch.autograd.grad(loss, [weight, bias])
        weight, bias = weight - lr * grad_weight, bias - lr * grad_bias
    return weight.detach(), bias.detach()


@pytest.mark.parametrize(
    ("conv", "order"), [("plain", "second"), ("plain", "first"), ("acdc-net", "second")]
)
def test_head_only_adaptation_moves_the_head_and_leaves_the_backbone(conv: str, order: str) -> None:
    meta = learner("conv4", conv, first_order=order == "first", adapt="head")
    task = episodes(1, SIZE["conv4"])[0]
    features_before, head_before = snapshot(meta.model.features), snapshot(meta.model.head)
    task_learner = meta.task_learner()
    adapt_task(task_learner, task.support_x, task.support_y, STEPS)

    # the backbone: the meta-learner's own tensors, bit for bit as they were
    assert task_learner.features is meta.model.features
    for name, param in meta.model.features.named_parameters():
        assert param.grad_fn is None, f"{name} was replaced by an adapted tensor"
        assert torch.equal(param, features_before[name]), f"{name} moved in the inner loop"
    # the head: STEPS SGD steps on the fixed features, by hand
    adapted = dict(cast(nn.Module, task_learner.head.module).named_parameters())
    assert adapted.keys() == head_before.keys() == {"weight", "bias"}
    weight, bias = hand_adapted_head(
        meta.model.features, meta.model.head, task.support_x, task.support_y, STEPS, LR
    )
    assert not torch.equal(adapted["weight"], head_before["weight"])
    torch.testing.assert_close(adapted["weight"].detach(), weight, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(adapted["bias"].detach(), bias, rtol=1e-9, atol=1e-12)
    assert all(torch.equal(p, head_before[n]) for n, p in meta.model.head.named_parameters())
    # frozen within the task, the backbone is still meta-learned: the query loss reaches it
    F.cross_entropy(task_learner(task.query_x), task.query_y).backward()
    for name, param in meta.model.features.named_parameters():
        assert param.grad is not None and bool(param.grad.any()), f"no meta-gradient for {name}"


def test_the_api_adapts_only_the_head_of_a_head_only_run(tmp_path: Path) -> None:
    learner_ = load(make_run(tmp_path, tiny_config(adapt="head")).root, device="cpu")
    support_x, support_y, query_x, *_ = evaluation_episodes(learner_).episode(0)
    features = learner_.meta.model.features
    before = {name: value.clone() for name, value in features.state_dict().items()}
    head_before = snapshot(learner_.meta.model.head)

    model = learner_.adapt(support_x, support_y, steps=3)
    assert isinstance(model, InLayout) and isinstance(model.module, nn.Sequential)
    adapted_features, adapted = model.module
    adapted_head = adapted.module  # inside the task copy's MAML wrapper
    assert isinstance(adapted_head, nn.Linear)
    assert adapted_features is features  # the learner's own module: its very tensors
    for name, value in features.state_dict().items():  # parameters and batch-norm statistics
        assert torch.equal(value, before[name]), f"{name} changed"
    assert not torch.equal(adapted_head.weight, head_before["weight"])
    weight, bias = hand_adapted_head(
        features,
        learner_.meta.model.head,
        support_x,
        support_y,
        3,
        learner_.config.inner_lr,
    )
    torch.testing.assert_close(adapted_head.weight, weight)
    torch.testing.assert_close(adapted_head.bias, bias)
    # the model: the learner's features, then the adapted head
    with torch.no_grad():
        expected = adapted_head(features(query_x))
        torch.testing.assert_close(model(query_x), expected)  # layouts: rounding only


# ---------------------------------------------------------------------------- Meta-SGD


@pytest.mark.parametrize("order", ["second", "first"])
def test_a_meta_sgd_inner_step_is_theta_minus_alpha_times_the_gradient(order: str) -> None:
    meta = learner("conv4", "plain", first_order=order == "first", meta_sgd=True)
    task = episodes(1, SIZE["conv4"])[0]
    names, theta = zip(*meta.wrapped.module.named_parameters())
    alphas = list(meta.wrapped.lrs)
    assert len(alphas) == len(theta)
    # learner() draws the step sizes apart: a step with the scalar LR would not pass
    assert any(not torch.all(alpha == LR) for alpha in alphas)
    grads = torch.autograd.grad(F.cross_entropy(meta.model(task.support_x), task.support_y), theta)

    # the textbook path: the fast paths' layouts change the rounding of the gradient (1e-11
    # relative here), compared with this path in tests/runtime/test_fast_paths.py
    with cpu_fast_paths(False):
        task_learner = meta.task_learner()
        adapt_task(task_learner, task.support_x, task.support_y, 1)
    adapted = list(cast(nn.Module, task_learner.head.module).parameters())
    assert len(adapted) == len(theta)
    for name, new, p, alpha, grad in zip(names, adapted, theta, alphas, grads, strict=True):
        expected = p.detach() - alpha.detach() * grad
        torch.testing.assert_close(new.detach(), expected, rtol=1e-12, atol=0, msg=prefixed(name))
    # the step is differentiable in the step sizes: d(θ − α ⊙ g)/dα = −g, either order
    from_alphas = torch.autograd.grad(torch.stack([new.sum() for new in adapted]).sum(), alphas)
    for grad, got in zip(grads, from_alphas, strict=True):
        torch.testing.assert_close(got, -grad, rtol=1e-12, atol=0)
