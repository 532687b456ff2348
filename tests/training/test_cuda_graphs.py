"""Whole-step capture (``--cuda-graphs``) without a GPU: a CPU rehearsal of the capture
(:class:`metaacdc.runtime.cuda_graphs.Rehearsal`) runs the same bookkeeping (static
buffers, warm-up undone, optimizer state made before the capture) and must take the eager
steps bit for bit, in a bare step, an adaptation and a whole run; ``on`` is refused where
capture cannot be. tests/test_cuda.py checks the real capture on a GPU."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest
import torch

from metaacdc.data.sampler import task_seed
from metaacdc.errors import ConfigError
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.folder import RunFolder
from metaacdc.runtime import cuda_graphs
from metaacdc.runtime.cuda_graphs import GraphedCall, Rehearsal, wants_graphs
from metaacdc.training import train, trainer
from metaacdc.training.graphed_step import GraphedTrainStep, match_capturable, prime_adam
from metaacdc.training.step import StepStats, batched_train_step
from tests.training.test_engines import META_BATCH, float64_learner, meta_batches
from tests.training.test_trainer import parameters, tiny

pytestmark = pytest.mark.usefixtures("one_thread")

INNER_STEPS, UPDATES = 2, 5


def steps(meta: MetaLearner, graphed_from: int | None) -> list[StepStats]:
    """``UPDATES`` batched meta-updates, eager until ``graphed_from`` then captured."""
    optimizer = torch.optim.Adam(meta.parameters(), lr=1e-3)
    engine = BatchedMAML(meta)
    graphed = GraphedTrainStep(engine, optimizer, INNER_STEPS, capture=Rehearsal())
    stats = []
    for update, tasks in enumerate(meta_batches()[:UPDATES]):
        seeds = [task_seed(0, update * META_BATCH + i) for i in range(META_BATCH)]
        if graphed_from is not None and update >= graphed_from:
            stats.append(graphed(tasks, seeds))
        else:
            eager = batched_train_step(engine, tasks, optimizer, INNER_STEPS, task_seeds=seeds)
            stats.append(eager)
    return stats


@pytest.mark.parametrize(
    ("conv", "first_order", "graphed_from"),
    [("plain", False, 0), ("acdc-net", False, 0), ("acdc-net", True, 2)],
    ids=["plain-second-order", "acdc-net-second-order", "acdc-net-first-order-after-2-eager"],
)
def test_a_captured_step_takes_the_eager_steps_bit_for_bit(
    conv: str, first_order: bool, graphed_from: int
) -> None:
    """Atom-drop masks are inputs of the capture; starting after eager steps is a resumed
    run's case (Adam's state exists, nothing to prime)."""
    eager_meta, graphed_meta = (float64_learner(conv, first_order) for _ in range(2))
    eager = steps(eager_meta, None)
    graphed = steps(graphed_meta, graphed_from)
    assert [(s.loss, s.accuracy) for s in graphed] == [(s.loss, s.accuracy) for s in eager]
    for got, want in zip(graphed_meta.parameters(), eager_meta.parameters()):
        assert torch.equal(got, want)


def test_priming_adam_changes_no_weight_and_leaves_the_first_steps_state() -> None:
    weights = torch.nn.Parameter(torch.randn(4))
    optimizer = torch.optim.Adam([weights], lr=0.1)
    before = weights.detach().clone()
    prime_adam(optimizer)
    assert torch.equal(weights.detach(), before) and weights.grad is None
    state = optimizer.state[weights]
    assert float(state["step"]) == 0 and not state["exp_avg"].any()
    fresh = torch.nn.Parameter(before.clone())
    reference = torch.optim.Adam([fresh], lr=0.1)
    for param, optim in ((weights, optimizer), (fresh, reference)):
        param.grad = torch.ones(4)
        optim.step()
    assert torch.equal(weights.detach(), fresh.detach())


def test_a_graphed_call_undoes_its_warm_up_and_keeps_its_shapes() -> None:
    total = torch.zeros(())

    def add(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        total.add_(inputs[0].sum())
        return [total * 1]

    call = GraphedCall(add, [torch.ones(3)], state=[total], capture=Rehearsal())
    assert float(total) == 0  # warm-up and recording undone
    assert float(call([torch.full((3,), 2.0)])[0]) == 6
    assert float(call([torch.ones(3)])[0]) == 9
    with pytest.raises(ValueError, match="captured shapes"):
        call([torch.ones(4)])


@pytest.mark.parametrize(
    ("requested", "device", "engine", "wanted"),
    [
        ("off", "cuda", "batched", False),
        ("auto", "cpu", "batched", False),
        ("auto", "cuda", "learn2learn", False),
        ("auto", "cuda", "batched", True),
        ("on", "cuda", "batched", True),
    ],
)
def test_auto_captures_the_batched_engine_on_cuda(
    requested: str, device: str, engine: str, wanted: bool
) -> None:
    assert wants_graphs(requested, torch.device(device), engine=engine) is wanted


@pytest.mark.parametrize(
    ("device", "engine", "says"),
    [("cpu", "batched", "not on cpu"), ("cuda", "learn2learn", "--engine batched")],
)
def test_on_is_refused_where_capture_cannot_be(device: str, engine: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        wants_graphs("on", torch.device(device), engine=engine)


def test_a_loaded_adam_state_takes_the_flag_its_optimizer_was_built_with() -> None:
    """A checkpoint of a captured run (``capturable=True``) resumed eagerly, e.g. on the
    CPU; a CPU Adam cannot be capturable, so only this direction runs here."""
    weights = torch.nn.Parameter(torch.randn(3))
    written = torch.optim.Adam([weights], lr=0.1)
    weights.grad = torch.ones(3)
    written.step()
    saved = written.state_dict()
    saved["param_groups"][0]["capturable"] = True
    loaded = torch.optim.Adam([weights], lr=0.1)
    loaded.load_state_dict(saved)
    assert loaded.param_groups[0]["capturable"] is True  # what load_state_dict does
    match_capturable(loaded)
    assert loaded.param_groups[0]["capturable"] is False
    step = loaded.state[weights]["step"]
    assert step.device.type == "cpu" and step.dtype == torch.float32 and float(step) == 1
    weights.grad = torch.ones(3)
    loaded.step()  # a capturable CPU Adam would refuse this


def test_captured_adaptations_replay_the_eager_logits_and_follow_the_weights() -> None:
    meta = float64_learner("acdc-net", True).eval()
    graphed = BatchedMAML(meta, cuda_graphs=True, capture=Rehearsal())
    eager = BatchedMAML(meta)
    tasks = meta_batches()[0]
    batch = eager.batch(tasks)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        args = (batch.support_x, batch.support_y, batch.query_x, 3)
        return graphed.adapted_logits(*args), eager.adapted_logits(*args)

    for call in range(3):  # eager, captured, replayed
        got, want = both()
        assert torch.equal(got, want), call
    assert graphed._graphs.captured == 1
    with torch.no_grad():
        for param in meta.parameters():
            param.mul_(0.9)  # weights change in place, as the optimizer changes them
    got, want = both()
    assert torch.equal(got, want)
    meta.train()  # atom-drop draws masks: never captured
    graphed.adapted_logits(batch.support_x, batch.support_y, batch.query_x, 3)
    graphed.adapted_logits(batch.support_x, batch.support_y, batch.query_x, 3)
    assert graphed._graphs.captured == 1


@pytest.fixture
def rehearsed_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer captures on the CPU: graphs wanted, the capture rehearsed, Adam left
    as the CPU runs it (``capturable`` is for CUDA)."""
    monkeypatch.setattr(trainer, "wants_graphs", lambda *args, **kwargs: True)
    monkeypatch.setattr(
        trainer, "adam", lambda params, lr, capturable: torch.optim.Adam(params, lr=lr)
    )
    monkeypatch.setattr(
        trainer, "GraphedTrainStep", functools.partial(GraphedTrainStep, capture=Rehearsal())
    )


def metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(RunFolder(run).metrics).drop(columns=["tasks_per_s", "elapsed_s"])


@pytest.mark.usefixtures("rehearsed_training")
def test_a_captured_run_and_its_resumption_equal_the_eager_run(tmp_path: Path) -> None:
    settings = tiny(engine="batched")
    eager = tmp_path / "eager"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "wants_graphs", lambda *args, **kwargs: False)
        train(settings, eager, progress=False)
    graphed = tmp_path / "graphed"
    train(settings, graphed, progress=False, stop_after=3)
    train(settings, graphed, resume=True, progress=False)
    pd.testing.assert_frame_equal(metrics(graphed), metrics(eager))
    for name, values in parameters(eager).items():
        assert torch.equal(parameters(graphed)[name], values), name


@pytest.mark.usefixtures("rehearsed_training")
def test_a_refused_capture_trains_eagerly_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    eager = tmp_path / "eager"
    train(tiny(engine="batched", meta_updates=2), eager, progress=False)
    monkeypatch.setattr(cuda_graphs.Rehearsal, "record", refuse)
    refused = tmp_path / "refused"
    train(tiny(engine="batched", meta_updates=2), refused, progress=False)
    log = RunFolder(refused).log.read_text()
    assert (
        "CUDA graphs off for training, eager steps instead: RuntimeError: operation not "
        "permitted when stream is capturing\n" in log
    )
    for name, values in parameters(eager).items():
        assert torch.equal(parameters(refused)[name], values), name
