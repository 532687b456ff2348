"""The evaluator: its numbers against a direct computation and against learn2learn by hand,
determinism on a frozen manifest, task independence, no gradient into the stored model and
no second-order graph."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from metaacdc.api import Learner
from metaacdc.data import (
    Episode,
    EpisodeSampler,
)
from metaacdc.errors import ConfigError
from metaacdc.evaluation.evaluator import EvalResult, confidence_95, evaluate
from metaacdc.maml.l2l import learn2learn as l2l
from tests.conftest import single_thread
from tests.tiny_runs import frozen_episodes, synthetic

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = 6


@pytest.fixture(scope="module")
def result(learner: Learner, sampler: EpisodeSampler) -> EvalResult:
    with single_thread():  # as the tests that compare with it run
        return evaluate(learner, sampler, TASKS, progress=False)


def test_summary_is_mean_and_ci95_of_the_task_accuracies(result: EvalResult) -> None:
    accuracies = result.accuracies
    assert accuracies.shape == (TASKS,)
    assert ((accuracies >= 0) & (accuracies <= 1)).all()
    assert result.mean == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert result.ci95 == pytest.approx(1.96 * np.std(accuracies) / np.sqrt(TASKS), abs=1e-12)
    assert confidence_95(np.array([0.5, 1.0])) == pytest.approx(1.96 * 0.25 / np.sqrt(2))
    assert len(set(accuracies.tolist())) > 1  # a non-trivial check: tasks differ
    assert f"{100 * result.mean:.2f} ±" in str(result)


def test_evaluator_equals_learn2learn_by_hand(
    learner: Learner, sampler: EpisodeSampler, result: EvalResult
) -> None:
    """Independent loop: learn2learn MAML on a copy of the model, first order, 10 steps
    (the run's test-time steps: twice its 5 training steps by default)."""
    maml = l2l.algorithms.MAML(
        copy.deepcopy(learner.meta.model), lr=learner.config.inner_lr, first_order=True
    )
    expected = []
    for i in range(TASKS):
        support_x, support_y, query_x, query_y, _ = sampler.episode(i)
        clone = maml.clone()
        for _ in range(10):
            clone.adapt(F.cross_entropy(clone(support_x), support_y))
        with torch.no_grad():
            expected.append((clone(query_x).argmax(1) == query_y).float().mean().item())
    assert learner.config.test_inner_steps == 10
    np.testing.assert_allclose(result.accuracies, expected, atol=1e-6)
    assert result.mean == pytest.approx(np.mean(expected), abs=1e-6)
    assert result.ci95 == pytest.approx(1.96 * np.std(expected) / np.sqrt(TASKS), abs=1e-6)


def test_a_frozen_manifest_gives_identical_numbers_twice(
    learner: Learner, sampler: EpisodeSampler, result: EvalResult
) -> None:
    frozen = frozen_episodes(learner, TASKS)
    first = evaluate(learner, frozen, TASKS, progress=False)
    second = evaluate(learner, frozen, TASKS, progress=False)
    assert np.array_equal(first.accuracies, second.accuracies)
    assert (first.mean, first.ci95) == (second.mean, second.ci95)
    # the manifest replays the sampler's episodes with the same seed
    assert np.array_equal(first.accuracies, result.accuracies)


class Shifted:
    """Episodes ``start, start + 1, ...`` of a sampler, renumbered from 0."""

    def __init__(self, sampler: EpisodeSampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def episode(self, i: int) -> Episode:
        return self.sampler.episode(self.start + i)


def test_tasks_are_independent_of_each_other(
    learner: Learner, sampler: EpisodeSampler, result: EvalResult
) -> None:
    """A task's accuracy does not depend on which tasks were evaluated before it."""
    alone = evaluate(learner, Shifted(sampler, 3), 2, progress=False)
    assert np.array_equal(alone.accuracies, result.accuracies[3:5])


def test_evaluation_leaves_no_gradient_and_no_change(
    learner: Learner, sampler: EpisodeSampler
) -> None:
    before = {k: v.clone() for k, v in learner.meta.state_dict().items()}
    evaluate(learner, sampler, 2, progress=False)
    assert all(p.grad is None for p in learner.meta.parameters())
    for key, value in learner.meta.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not learner.meta.training


def test_evaluation_builds_no_second_order_graph(
    learner: Learner, sampler: EpisodeSampler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every inner gradient is first order (no create_graph) and its loss has no path back
    to the stored parameters."""
    stored = list(learner.meta.parameters())
    real_grad = torch.autograd.grad
    calls = []

    def recording_grad(outputs, inputs, *args, **kwargs):
        inputs = list(inputs)
        reach = real_grad(outputs, stored, retain_graph=True, allow_unused=True)
        calls.append((kwargs.get("create_graph"), [g is not None for g in reach]))
        assert not any(x is s for x in inputs for s in stored)
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(l2l.algorithms.maml, "grad", recording_grad)
    evaluate(learner, sampler, 2, progress=False)
    assert len(calls) == 2 * learner.config.test_inner_steps
    assert all(create_graph is False for create_graph, _ in calls)
    assert not any(any(reached) for _, reached in calls)


def test_inner_steps_override(learner: Learner, sampler: EpisodeSampler) -> None:
    none = evaluate(learner, sampler, 3, inner_steps=0, progress=False)
    expected = []
    for i in range(3):
        episode = sampler.episode(i)
        with torch.no_grad():
            predicted = learner.meta.model(episode.query_x).argmax(1)
        expected.append((predicted == episode.query_y).float().mean().item())
    np.testing.assert_allclose(none.accuracies, expected, atol=1e-6)


def test_progress_bar_and_workers_do_not_change_results(
    learner: Learner,
    sampler: EpisodeSampler,
    result: EvalResult,
    capsys: pytest.CaptureFixture,
) -> None:
    shown = evaluate(learner, sampler, TASKS, progress=True)
    assert "evaluating" in capsys.readouterr().err
    assert np.array_equal(shown.accuracies, result.accuracies)
    loaded = evaluate(learner, sampler, TASKS, progress=False, workers=1)
    assert np.array_equal(loaded.accuracies, result.accuracies)


def test_to_csv_is_readable_by_pandas(result: EvalResult, tmp_path: Path) -> None:
    path = result.to_csv(tmp_path / "eval" / "test.csv")
    table = pd.read_csv(path, dtype={"task": str})
    tasks = table[table.task.str.isdigit()]
    np.testing.assert_allclose(tasks.accuracy.to_numpy(), result.accuracies, rtol=1e-9)
    assert tasks.task.astype(int).tolist() == list(range(TASKS))
    summary = table.set_index("task").accuracy
    assert summary["mean"] == pytest.approx(result.mean, rel=1e-9)
    assert summary["ci95"] == pytest.approx(result.ci95, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": 0}, "tasks=0"),
        ({"tasks": 2, "inner_steps": -1}, "inner_steps=-1"),
        ({"tasks": 2, "workers": -1}, "workers=-1"),
    ],
)
def test_evaluate_errors(learner: Learner, sampler: EpisodeSampler, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate(learner, sampler, progress=False, **kwargs)


def test_tasks_wider_than_the_head_are_refused(learner: Learner) -> None:
    wide = EpisodeSampler(synthetic("test"), ways=6, shots=1, queries=2, seed=0)
    with pytest.raises(ConfigError, match="6 classes but this model's head has 5"):
        evaluate(learner, wide, 1, progress=False)


def test_empty_result_is_an_error() -> None:
    with pytest.raises(ValueError, match="no task accuracies"):
        EvalResult.from_accuracies([])
