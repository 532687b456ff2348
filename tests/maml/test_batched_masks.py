"""The batched engine's atom-drop masks are the learn2learn engine's, drawn from each task's
seed whatever tasks share the batch; its batched evaluation equals ``Learner.adapt``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from metaacdc.config import TrainConfig, resolve
from metaacdc.data import DataFacts
from metaacdc.errors import ConfigError
from metaacdc.maml.adaptation import Learner
from metaacdc.maml.atom_drop import MaskDraw, draw_masks, plan_draws
from metaacdc.maml.batched import BatchedMAML, stack_tasks
from tests.maml.test_batched import (
    CPU,
    SIZE,
    WAYS,
    assert_same_gradients,
    batched_gradients,
    episodes,
    l2l_gradients,
    learner,
)

DRAWS = (MaskDraw((8, 1, 1), 0.9), MaskDraw((4, 8, 1, 1), 0.9), MaskDraw((3,), 0.5))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_draw_per_task_gives_the_numbers_of_separate_draws() -> None:
    masks = draw_masks(DRAWS, [7, 8], CPU)
    for task, seed in enumerate([7, 8]):
        torch.manual_seed(seed)  # as the learn2learn engine's task runs: layer after layer
        for draw, mask in zip(DRAWS, masks):
            assert torch.equal(mask[task], torch.rand(draw.shape) < draw.keep)


def test_a_task_draws_the_same_masks_in_any_batch() -> None:
    alone = draw_masks(DRAWS, [8], CPU)
    among = draw_masks(DRAWS, [5, 8, 9], CPU)
    for one, many in zip(alone, among):
        assert torch.equal(one[0], many[1])
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(alone, among))


def test_the_plan_follows_the_layers_in_call_order() -> None:
    meta = learner("conv4", "acdc-g-net", first_order=False, atom_drop=0.25)
    draws = plan_draws(meta.model, torch.zeros(2, 3, 16, 16, dtype=torch.float64))
    # the RGB stem is too narrow to group: 8 atoms; then 64 / 16 = 4 units of 8 atoms
    assert [d.shape for d in draws] == [(8, 1, 1)] + [(4, 8, 1, 1)] * 3
    assert {d.keep for d in draws} == {0.75}
    assert plan_draws(meta.eval().model, torch.zeros(2, 3, 16, 16, dtype=torch.float64)) == ()


@pytest.mark.parametrize(
    ("backbone", "conv", "first_order", "adapt", "seeds"),
    [
        ("conv4", "acdc-net", False, "all", [11, 2**62 + 12, 13]),
        ("conv4", "acdc-g-block", False, "all", None),
        ("conv4", "acdc-net", False, "head", [11, 12, 13]),
        ("resnet10", "acdc-g-net", True, "all", [11, 12, 13]),
    ],
    ids=["conv4-net", "conv4-g-block-global-generator", "conv4-head", "resnet10-g-net"],
)
def test_meta_gradient_with_atom_drop_equals_learn2learn(
    backbone: str, conv: str, first_order: bool, adapt: str, seeds: list[int] | None
) -> None:
    meta = learner(backbone, conv, first_order, adapt, atom_drop=0.3)
    tasks = episodes(3, SIZE[backbone])
    torch.manual_seed(5)  # the same global state for both, where there are no seeds
    want = l2l_gradients(meta, tasks, seeds)
    torch.manual_seed(5)
    got = batched_gradients(meta, tasks, seeds)
    assert_same_gradients(got, want)
    meta.eval()  # atom-drop off: another gradient, so the masks above were in play
    assert not torch.allclose(batched_gradients(meta, tasks, seeds)[0], got[0])


def test_meta_gradient_of_a_batch_is_the_sum_of_its_tasks_alone() -> None:
    meta = learner("conv4", "acdc-net", first_order=False, atom_drop=0.3)
    tasks, seeds = episodes(3, SIZE["conv4"]), [21, 22, 23]
    together = batched_gradients(meta, tasks, seeds)
    apart = [batched_gradients(meta, [task], [seed]) for task, seed in zip(tasks, seeds)]
    summed = [sum(parts) for parts in zip(*apart)]
    assert_same_gradients(together, summed)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- evaluation


def run_learner(meta: object) -> Learner:
    facts = DataFacts("random", SIZE["conv4"], 3, (0.0,) * 3, (1.0,) * 3)
    return Learner(meta, resolve(TrainConfig()), facts, CPU)  # type: ignore[arg-type]


def learner_logits(
    run: Learner, tasks: list, steps: int, lr: float | None = None, ways: int | None = None
) -> Tensor:
    """Each task through ``Learner.predict`` (its ``adapt``, then the query pass)."""
    out = []
    for task in tasks:
        support_y = task.support_y if ways is None else task.support_y % ways
        _, logits = run.predict(
            task.support_x, support_y, task.query_x, steps=steps, lr=lr, return_logits=True
        )
        out.append(logits)
    return torch.stack(out)


@pytest.mark.parametrize(
    ("conv", "adapt", "meta_sgd", "lr", "ways"),
    [
        ("plain", "all", False, None, None),
        ("acdc-net", "all", False, 0.3, 2),
        ("acdc-g-net", "head", False, None, None),
        ("acdc-layer", "all", True, None, None),
    ],
    ids=["plain", "acdc-net-lr-2-ways", "acdc-g-net-head", "acdc-layer-meta-sgd"],
)
def test_batched_adaptation_equals_learner_adapt(
    conv: str, adapt: str, meta_sgd: bool, lr: float | None, ways: int | None
) -> None:
    meta = learner("conv4", conv, first_order=False, adapt=adapt, meta_sgd=meta_sgd).eval()
    tasks = episodes(3, SIZE["conv4"], shots=2)
    if ways is not None:  # 2-way tasks on the 3-way head: the first two logits
        tasks = [task._replace(support_y=task.support_y % ways) for task in tasks]
    before = [p.detach().clone() for p in meta.parameters()]
    batch = stack_tasks(tasks, CPU)
    got = BatchedMAML(meta).adapted_logits(
        batch.support_x, batch.support_y, batch.query_x, 3, lr=lr, ways=ways
    )
    want = learner_logits(run_learner(meta), tasks, 3, lr=lr)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9 * float(want.abs().max()))
    assert all(torch.equal(a, b) for a, b in zip(before, meta.parameters()))
    assert all(p.grad is None for p in meta.parameters())


def test_batched_adaptation_in_training_mode_draws_the_learners_masks() -> None:
    meta = learner("conv4", "acdc-net", first_order=False, atom_drop=0.3)
    tasks = episodes(3, SIZE["conv4"])
    batch = stack_tasks(tasks, CPU)
    torch.manual_seed(6)
    got = BatchedMAML(meta).adapted_logits(batch.support_x, batch.support_y, batch.query_x, 2)
    torch.manual_seed(6)
    run = run_learner(meta)
    want = learner_logits(run, tasks, 2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9 * float(want.abs().max()))


def test_accuracies_and_refusals() -> None:
    meta = learner("conv4", "plain", first_order=True, meta_sgd=True).eval()
    engine = BatchedMAML(meta)
    tasks = episodes(2, SIZE["conv4"])
    accuracy = engine.accuracies(tasks, 1)
    assert accuracy.shape == (2,) and accuracy.dtype == torch.float64
    batch = stack_tasks(tasks, CPU)
    logits = engine.adapted_logits(batch.support_x, batch.support_y, batch.query_x, 1)
    assert batch.query_y is not None
    assert torch.equal(accuracy, (logits.argmax(-1) == batch.query_y).double().mean(-1))
    with pytest.raises(ConfigError, match="lr cannot be set for a Meta-SGD run"):
        engine.adapted_logits(batch.support_x, batch.support_y, batch.query_x, 1, lr=0.1)
    with pytest.raises(ConfigError, match=f"ways=4 is more than the head's {WAYS} outputs"):
        engine.adapted_logits(batch.support_x, batch.support_y, batch.query_x, 1, ways=4)
    with pytest.raises(ConfigError, match=r"query_x has shape \(1, 6, 3, 16, 16\)"):
        engine.adapted_logits(batch.support_x, batch.support_y, batch.query_x[:1], 1)
