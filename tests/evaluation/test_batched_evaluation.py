"""The evaluator and the adaptation API on the batched engine: the learn2learn engine's
per-task accuracies on 50 frozen episodes, tasks of another shape run in their own call,
batches sized to the free memory, and one clear line for a bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from metaacdc.api import Learner
from metaacdc.data import Episode, EpisodeSampler, ManifestSampler
from metaacdc.errors import ConfigError
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.runs.experiment import evaluation_transform
from metaacdc.runtime import budget
from tests.tiny_runs import TEST_QUERIES, frozen_episodes, synthetic

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")

FROZEN_TASKS = 50
CPU = torch.device("cpu")


class InFloat64:
    """A sampler's episodes with float64 images."""

    def __init__(self, sampler: ManifestSampler | EpisodeSampler) -> None:
        self.sampler = sampler

    def episode(self, i: int) -> Episode:
        return Episode(
            *(t.double() if t.is_floating_point() else t for t in self.sampler.episode(i))
        )


@pytest.fixture(scope="module")
def exact(learner: Learner) -> Learner:
    """The tiny run's learner in float64."""
    return Learner(copy.deepcopy(learner.meta).double(), learner.config, learner.data, CPU)


def test_fifty_frozen_episodes_give_the_learn2learn_accuracies(
    learner: Learner, exact: Learner
) -> None:
    """Float64, so that no near-tie of an untrained model's logits flips between the
    engines' roundings (in float32 one query of 1,000 did)."""
    frozen = frozen_episodes(learner, FROZEN_TASKS)
    runs = {
        engine: evaluate(
            exact, InFloat64(frozen), FROZEN_TASKS, inner_steps=2, progress=False, engine=engine
        )
        for engine in ("learn2learn", "batched")
    }
    np.testing.assert_array_equal(runs["batched"].accuracies, runs["learn2learn"].accuracies)
    assert len(set(runs["learn2learn"].accuracies.tolist())) > 3, "the tasks differ: a real check"


class MixedShots:
    """Episodes of alternating runs of 1-shot and 2-shot tasks."""

    def __init__(self, one: EpisodeSampler, two: EpisodeSampler) -> None:
        self.one, self.two = one, two

    def episode(self, i: int) -> Episode:
        return (self.two if (i // 3) % 2 else self.one).episode(i)


def test_tasks_of_another_shape_run_in_their_own_call(
    learner: Learner, sampler: EpisodeSampler, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_shot = EpisodeSampler(
        synthetic("test"),
        5,
        2,
        TEST_QUERIES,
        seed=1,
        transform=evaluation_transform(learner.config),
        mean=learner.data.mean,
        std=learner.data.std,
    )
    mixed = MixedShots(sampler, two_shot)
    calls: list[int] = []
    predict = Learner.predict_tasks

    def counted(self: Learner, support_x: torch.Tensor, *args: object, **kwargs: object):
        calls.append(len(support_x))
        return predict(self, support_x, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Learner, "predict_tasks", counted)
    batched = evaluate(learner, mixed, 8, progress=False, engine="batched")
    reference = evaluate(learner, mixed, 8, progress=False, engine="learn2learn")
    # the same predictions up to float32 rounding: on some CPUs' kernels (AVX2) a near-tie
    # of one query's logits falls the other way, so at most one query of one task differs
    differs = np.abs(batched.accuracies - reference.accuracies)
    assert differs.max() <= 1 / (5 * TEST_QUERIES) + 1e-9 and (differs > 0).sum() <= 1
    assert calls == [3, 3, 2]  # runs of equal shapes, never padded


def test_predict_tasks_is_predict_of_each_task(exact: Learner, sampler: EpisodeSampler) -> None:
    """Float64: equal to 1e-9 (in float32, five steps at lr 0.1 on an untrained model
    amplify the engines' different roundings to 1e-3)."""
    episodes = [InFloat64(sampler).episode(i) for i in range(5)]
    support_x, support_y, query_x = (torch.stack([e[i] for e in episodes]) for i in range(3))
    predicted, logits = exact.predict_tasks(support_x, support_y, query_x, return_logits=True)
    for task, episode in enumerate(episodes):
        one, one_logits = exact.predict(*episode[:3], return_logits=True)
        torch.testing.assert_close(logits[task], one_logits, rtol=1e-9, atol=1e-12)
        assert torch.equal(predicted[task], one)
    in_twos = exact.predict_tasks(support_x, support_y, query_x, tasks_per_batch=2)
    assert torch.equal(in_twos, predicted)
    # three ways of a five-way head: the first three logits, as predict gives
    three = [i for i in range(len(support_y[0])) if support_y[0, i] < 3]
    _, few_logits = exact.predict_tasks(
        support_x[:, three], support_y[:, three], query_x, steps=2, return_logits=True
    )
    _, want = exact.predict(
        support_x[0, three], support_y[0, three], query_x[0], steps=2, return_logits=True
    )
    assert few_logits.shape[-1] == 3
    torch.testing.assert_close(few_logits[0], want, rtol=1e-9, atol=1e-12)


def test_tasks_per_batch_follows_the_free_memory(
    learner: Learner, sampler: EpisodeSampler, monkeypatch: pytest.MonkeyPatch
) -> None:
    support_x, support_y = sampler.episode(0)[:2]
    task_bytes = learner._batched_engine().adaptation_bytes(support_x, support_y)
    assert task_bytes > support_x.numel() * support_x.element_size()  # activations, not inputs
    monkeypatch.setattr(budget, "free_bytes", lambda device: 10 * task_bytes)
    assert learner.tasks_per_batch(support_x, support_y) == int(10 * budget.MEMORY_SHARE)
    monkeypatch.setattr(budget, "free_bytes", lambda device: 0)
    assert learner.tasks_per_batch(support_x, support_y) == 1
    monkeypatch.setattr(budget, "free_bytes", lambda device: 1 << 50)
    assert learner.tasks_per_batch(support_x, support_y) == budget.MOST_TASKS


def stacked(sampler: EpisodeSampler, tasks: int = 2) -> list[torch.Tensor]:
    episodes = [sampler.episode(i) for i in range(tasks)]
    return [torch.stack([e[i] for e in episodes]) for i in range(3)]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda x, y, q: (x[0], y, q), r"support_x must be a \(T, N, 3, 32, 32\) tensor"),
        (lambda x, y, q: (x, y, q[:1]), "support_x holds 2 tasks but query_x 1"),
        (lambda x, y, q: (x, y[0], q), r"support_y must be a \(T, S\) tensor"),
        (lambda x, y, q: (x, y.float(), q), "int64"),
        (lambda x, y, q: (x, y.clamp(max=0), q), "single class"),
        (lambda x, y, q: (x, y * 2, q), "expected every label of 0..N-1"),
        (lambda x, y, q: (x.byte(), y, q), "dtype torch.uint8"),
        (lambda x, y, q: (x[:0], y[:0], q[:0]), "no task given"),
        (lambda x, y, q: (x, y, q[..., :16, :16]), r"query_x\[0\] has shape"),
    ],
    ids=[
        "not-stacked",
        "query-count",
        "labels-not-stacked",
        "float-labels",
        "one-class",
        "gapped-labels",
        "uint8",
        "no-task",
        "query-size",
    ],
)
def test_predict_tasks_refuses_bad_input_in_one_line(
    learner: Learner, sampler: EpisodeSampler, mangle, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        learner.predict_tasks(*mangle(*stacked(sampler)))


def test_tasks_of_different_ways_are_refused(learner: Learner, sampler: EpisodeSampler) -> None:
    support_x, support_y, query_x = stacked(sampler)
    support_y = support_y.clone()
    support_y[1] = support_y[1] % 3  # task 1: three ways
    with pytest.raises(ConfigError, match=r"\[3, 5\] ways"):
        learner.predict_tasks(support_x, support_y, query_x)


def test_batched_evaluation_refuses_cpu_processes(
    learner: Learner, sampler: EpisodeSampler
) -> None:
    with pytest.raises(ConfigError, match="--engine learn2learn or --processes 1"):
        evaluate(learner, sampler, 4, progress=False, engine="batched", processes=2)
    with pytest.raises(ConfigError, match="engine"):
        evaluate(learner, sampler, 4, progress=False, engine="fast")
