"""GPU estimates of `metaacdc curve --estimate`: the counts they rest on and the cost model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaacdc.backbones import create_backbone
from metaacdc.config import TrainConfig, resolve
from metaacdc.reports.estimate import (
    TaskOps,
    estimate_grid,
    estimate_peaks,
    estimate_run,
    format_estimates,
    model_costs,
    task_ops,
)
from metaacdc.reports.summary import forward_flops
from metaacdc.runs.experiment import build_model

#: counting runs small operators on tiny tasks: one thread (see one_thread in
#: tests/conftest.py); operator counts do not depend on it
pytestmark = pytest.mark.usefixtures("one_thread")

# as many test-time as training steps, so training's extra work is what is compared
TINY = TrainConfig(image_size=16, meta_updates=100, val_every=50, val_tasks=10, test_inner_steps=5)


def test_model_costs_match_the_flop_counter() -> None:
    model = create_backbone("conv4", "plain", image_size=16)
    costs = model_costs(model, 3, 16)
    assert costs.flops(1) == pytest.approx(forward_flops(model, 16))
    assert costs.flops_fixed == 0  # a plain conv has nothing to rebuild per batch
    assert costs.saved(8) > costs.saved(2) > 0
    assert costs.parameters == sum(p.numel() for p in model.parameters())


def test_acdc_costs_include_kernel_reconstruction_once_per_batch() -> None:
    costs = model_costs(create_backbone("conv4", "acdc-net", image_size=16), 3, 16)
    assert costs.flops_fixed > 0


def test_task_operators_are_counted_from_real_tasks() -> None:
    first = task_ops(dataclasses.replace(TINY, first_order=True), 3)
    second = task_ops(dataclasses.replace(TINY, first_order=False), 3)
    # second order adds the double backward; evaluation has no meta-gradient
    assert second.train > first.train > first.eval > 100
    assert second.eval == first.eval
    longer = task_ops(dataclasses.replace(TINY, first_order=True, inner_steps=10), 3)
    assert longer.train > first.train
    head_only = task_ops(dataclasses.replace(TINY, first_order=True, adapt="head"), 3)
    meta_sgd = task_ops(dataclasses.replace(TINY, first_order=True, meta_sgd=True), 3)
    assert head_only.train < first.train < meta_sgd.train


def test_counting_leaves_the_random_state_alone() -> None:
    state = torch.get_rng_state()
    task_ops(TINY, 3)
    assert torch.equal(torch.get_rng_state(), state)


def test_time_is_launch_bound_for_small_tasks() -> None:
    costs = model_costs(create_backbone("conv4", "plain", image_size=16), 3, 16)
    config = resolve(TINY)
    few, many = TaskOps(train=1000, eval=100), TaskOps(train=2000, eval=200)
    slow = estimate_run(config, costs, many, test_tasks=100)
    assert slow.hours == pytest.approx(2 * estimate_run(config, costs, few, test_tasks=100).hours)


def test_second_order_costs_more_time_and_memory() -> None:
    costs = model_costs(create_backbone("conv4", "plain", image_size=16), 3, 16)
    first_config = dataclasses.replace(TINY, first_order=True)
    second_config = dataclasses.replace(TINY, first_order=False)
    first = estimate_run(first_config, costs, task_ops(first_config, 3), test_tasks=100)
    second = estimate_run(second_config, costs, task_ops(second_config, 3), test_tasks=100)
    assert second.train_tflop > first.train_tflop and second.hours > first.hours
    assert second.peak_gib > first.peak_gib
    assert second.eval_tflop == pytest.approx(first.eval_tflop)  # evaluation is first order


def test_estimate_grows_with_length_and_test_tasks() -> None:
    costs = model_costs(create_backbone("conv4", "plain", image_size=16), 3, 16)
    ops = task_ops(TINY, 3)
    short = estimate_run(TINY, costs, ops, test_tasks=100)
    long = estimate_run(dataclasses.replace(TINY, meta_updates=1000), costs, ops, test_tasks=100)
    assert long.train_tflop == pytest.approx(10 * short.train_tflop)
    assert long.hours > short.hours
    assert estimate_run(TINY, costs, ops, test_tasks=1000).eval_tflop > short.eval_tflop


def test_grid_table() -> None:
    configs = [resolve(dataclasses.replace(TINY, backbone=b)) for b in ("conv4", "resnet10")]
    text = format_estimates(estimate_grid(configs, test_tasks=100))
    assert text.startswith("ESTIMATE, not a measurement")
    assert "\nconv4 " in text and "\nresnet10 " in text and "GPU hours for 2 runs" in text


def test_peaks_alone_are_the_estimates_peaks() -> None:
    """`curve --jobs auto` asks only the memory part, without the slow operator count."""
    configs = [resolve(dataclasses.replace(TINY, backbone=b)) for b in ("conv4", "resnet10")]
    configs.append(resolve(dataclasses.replace(TINY, first_order=False)))
    expected = []
    for config in configs:
        costs = model_costs(build_model(config, 3), 3, 16)
        expected.append(estimate_run(config, costs, TaskOps(train=0, eval=0)).peak_gib)
    assert estimate_peaks(configs) == pytest.approx(expected, rel=1e-12)
