"""The one switch of the CPU fast paths (metaacdc.runtime.fast_paths): it scopes and nests,
each fast path follows it, and with it off every path gives the plain path's numbers.

Pool-first batch norm and the fused double backward are also tested formula by formula
against the plain path in tests/backbones/test_pool_first.py and tests/maml/test_batch_norm.py
(both switched by this switch); the evaluation pool's workers in tests/evaluation/test_pool.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metaacdc.api import Learner, load
from metaacdc.backbones import create_backbone
from metaacdc.data import Episode
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.maml import batch_norm
from metaacdc.maml import learner as learner_module
from metaacdc.maml.learner import MetaLearner, adapt_task
from metaacdc.runtime import memory
from metaacdc.runtime.fast_paths import cpu_fast_paths, cpu_fast_paths_enabled
from tests.tiny_runs import evaluation_episodes, make_run

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, WAYS, STEPS = 16, 3, 2

# ------------------------------------------------------------------------------- the switch


def test_on_unless_a_block_turns_it_off_and_restored_after_it() -> None:
    assert cpu_fast_paths_enabled()
    with cpu_fast_paths(False):
        assert not cpu_fast_paths_enabled()
    assert cpu_fast_paths_enabled()


def test_blocks_nest_and_each_restores_what_it_found() -> None:
    with cpu_fast_paths(False):
        with cpu_fast_paths(True):
            assert cpu_fast_paths_enabled()
            with cpu_fast_paths(False):
                assert not cpu_fast_paths_enabled()
            assert cpu_fast_paths_enabled()
        assert not cpu_fast_paths_enabled()
    assert cpu_fast_paths_enabled()


def test_restored_after_an_exception() -> None:
    with pytest.raises(KeyError), cpu_fast_paths(False):
        raise KeyError("inside")
    assert cpu_fast_paths_enabled()
    with cpu_fast_paths(False):
        with pytest.raises(KeyError), cpu_fast_paths(True):
            raise KeyError("nested")
        assert not cpu_fast_paths_enabled()


# ------------------------------------------------------- the training task's fast paths


def toy_task(dtype: torch.dtype) -> Episode:
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(WAYS).repeat(2)
    images = [torch.randn(2 * WAYS, 3, SIZE, SIZE, generator=generator) for _ in range(2)]
    return Episode(images[0].to(dtype), labels, images[1].to(dtype), labels, torch.arange(WAYS))


def meta_learner(first_order: bool, dtype: torch.dtype = torch.float64) -> MetaLearner:
    torch.manual_seed(3)
    model = create_backbone("conv4", num_classes=WAYS, image_size=SIZE).to(dtype)
    return MetaLearner(model, 0.1, first_order)


def meta_gradient(meta: MetaLearner) -> list[Tensor]:
    """The meta-gradient of one task's query loss after ``STEPS`` inner steps."""
    task = toy_task(next(meta.parameters()).dtype)
    meta.zero_grad()
    learner = meta.task_learner()
    adapt_task(learner, task.support_x, task.support_y, STEPS)
    F.cross_entropy(learner(task.query_x), task.query_y).backward()
    return [p.grad.clone() for p in meta.parameters() if p.grad is not None]


@pytest.fixture
def hand_backs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Calls of the hook making a channels-last query pass's gradients contiguous."""
    calls: list[int] = []
    hook = learner_module._contiguous

    def counted(grad: Tensor) -> Tensor:
        calls.append(1)
        return hook(grad)

    monkeypatch.setattr(learner_module, "_contiguous", counted)
    yield calls


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Batch-norm calls served by the fused double backward."""
    calls: list[int] = []
    apply = batch_norm._BatchNorm.apply

    def counted(*args: object) -> Tensor:
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(batch_norm._BatchNorm, "apply", counted)
    yield calls


@pytest.mark.parametrize("first_order", [False, True])
def test_switch_turns_layouts_hand_back_and_fused_batch_norm_on_and_off(
    first_order: bool, hand_backs: list[int], fused_calls: list[int]
) -> None:
    meta = meta_learner(first_order)
    with cpu_fast_paths(False):
        layouts = meta.task_learner().layouts
        meta_gradient(meta)
    assert (layouts.support, layouts.query) == (torch.contiguous_format,) * 2
    assert hand_backs == [] and fused_calls == []
    layouts = meta.task_learner().layouts
    meta_gradient(meta)
    assert layouts.query == torch.channels_last
    if first_order:
        assert layouts.support == torch.channels_last
        assert hand_backs == [] and fused_calls == []  # first order: no double backward
    else:
        assert layouts.support == torch.contiguous_format
        assert len(hand_backs) == len(list(meta.parameters()))  # each adapted weight, once
        assert len(fused_calls) == 4 * STEPS  # each batch norm in each inner step


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_equals_the_plain_path(first_order: bool) -> None:
    """float64, so that the only differences (layouts, the double backward's sums) are far
    below any max-pool near-tie: equal to 1e-10."""
    meta = meta_learner(first_order)
    fast = meta_gradient(meta)
    with cpu_fast_paths(False):
        plain = meta_gradient(meta)
    assert len(fast) == len(plain) == len(list(meta.parameters()))
    for got, expected in zip(fast, plain):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_a_task_copy_keeps_the_layouts_it_was_made_with() -> None:
    meta = meta_learner(first_order=True)
    with cpu_fast_paths(False):
        task = meta.task_learner()
    assert task.layouts.query == torch.contiguous_format
    with cpu_fast_paths(False):
        assert meta.task_learner().layouts == task.layouts
    assert meta.task_learner().layouts != task.layouts


# --------------------------------------------------------------- evaluation and allocator


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory) -> Learner:
    return load(make_run(tmp_path_factory.mktemp("run")).root, device="cpu")


@pytest.fixture
def allocator_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Calls that change glibc's allocator thresholds."""
    calls: list[int] = []
    change = memory._set_thresholds

    def counted(*args: object) -> bool:
        calls.append(1)
        return change(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(memory, "_set_thresholds", counted)
    yield calls


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_switch_turns_the_allocator_scope_on_and_off(allocator_settings: list[int]) -> None:
    with cpu_fast_paths(False), memory.reuse_freed_memory() as applied:
        assert applied is False
    assert allocator_settings == []
    with memory.reuse_freed_memory() as applied, cpu_fast_paths(False):
        assert applied is True  # decided on entering: it stays for the block
    assert len(allocator_settings) == 2  # set, then restored


def test_predictions_equal_the_plain_path(learner: Learner) -> None:
    """First-order adaptation and a query pass without autograd: channels-last layouts and
    pool-first batch norm, against the default layout and the textbook order. Float32
    rounding only, carried through five inner steps: equal to 1e-4. Three of the head's five
    ways too (the task learner restricted to the first logits)."""
    task = evaluation_episodes(learner).episode(0)
    for ways in (5, 3):
        keep = task.support_y < ways
        support_x, support_y = task.support_x[keep], task.support_y[keep]
        _, fast = learner.predict(support_x, support_y, task.query_x, return_logits=True)
        with cpu_fast_paths(False):
            _, plain = learner.predict(support_x, support_y, task.query_x, return_logits=True)
        assert fast.shape == plain.shape == (len(task.query_x), ways)
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_evaluation_equals_the_plain_path(learner: Learner) -> None:
    sampler = evaluation_episodes(learner)
    fast = evaluate(learner, sampler, 3, progress=False)
    with cpu_fast_paths(False):
        plain = evaluate(learner, sampler, 3, progress=False)
    np.testing.assert_array_equal(fast.accuracies, plain.accuracies)
