"""The CUDA paths give the CPU's results: meta-gradients, bfloat16 autocast, the evaluator
and the adaptation API, pinned episode loading, and a run trained on the GPU then used on
the CPU. Skipped where no GPU is present (CI has none; these run on a GPU machine)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from metaacdc.api import load
from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind
from metaacdc.data import Episode, EpisodeSampler, episode_loader
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.folder import RunFolder
from metaacdc.training import meta_train_step, train
from metaacdc.training.graphed_step import GraphedTrainStep, adam
from metaacdc.training.step import StepStats, batched_train_step
from tests.tiny_runs import IMAGE_SIZE, evaluation_episodes, make_run, synthetic
from tests.training.test_gradients import LR, STEPS, tiny_model, toy_tasks
from tests.training.test_trainer import parameters, tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_float32() -> Iterator[None]:
    """Full float32 on the GPU (no TF32 in convolutions or matrix products), so that GPU
    and CPU differ by summation order alone."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def meta_gradients(
    conv: str,
    first_order: bool,
    device: torch.device,
    amp: bool = False,
    tasks: list[Episode] | None = None,
    lr: float = LR,
) -> tuple[StepStats, list[torch.Tensor]]:
    """The step's statistics and meta-gradient on ``tasks`` (default the 16 px toy tasks;
    others are taken to be 3-way tasks of ``IMAGE_SIZE`` px images)."""
    if tasks is None:
        model = tiny_model(conv)
    else:
        torch.manual_seed(3)
        kind = conv_kind(conv, atom_drop=0.0)
        model = create_backbone("conv4", kind, num_classes=3, image_size=IMAGE_SIZE)
    learner = MetaLearner(model, lr, first_order).to(device)
    frozen = torch.optim.SGD(learner.parameters(), lr=0.0)
    stats = meta_train_step(learner, tasks or toy_tasks(), frozen, STEPS, device, amp)
    return stats, [p.grad.cpu() for p in learner.parameters()]


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("conv", ["plain", "acdc-net"])
def test_meta_gradients_on_the_gpu_equal_the_cpu(conv: str, first_order: bool) -> None:
    cpu_stats, on_cpu = meta_gradients(conv, first_order, torch.device("cpu"))
    gpu_stats, on_gpu = meta_gradients(conv, first_order, CUDA)
    assert gpu_stats.loss == pytest.approx(cpu_stats.loss, rel=1e-4)
    for got, want in zip(on_gpu, on_cpu):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("conv", ["plain", "acdc-net"])
def test_bfloat16_autocast_keeps_float32_weights_and_the_gradient_direction(conv: str) -> None:
    """bfloat16 keeps 8 bits of mantissa, and batch norm over a few images amplifies the
    rounding: on 5-way 1-shot tasks of 32 px images (batch norm over 5 to 20 images), the
    meta-gradient differs from float32's by 20-35 % in norm (measured on the CPU). What must
    hold is that autocast is in effect and the meta-gradient still points the same way."""
    sampler = EpisodeSampler(synthetic("train"), ways=3, shots=1, queries=4, seed=0)
    tasks = [sampler.episode(i) for i in range(2)]
    exact_stats, exact = meta_gradients(conv, False, CUDA, tasks=tasks, lr=0.01)
    mixed_stats, mixed = meta_gradients(conv, False, CUDA, amp=True, tasks=tasks, lr=0.01)
    assert np.isfinite(mixed_stats.loss) and mixed_stats.loss != exact_stats.loss
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in mixed)
    flat_mixed = torch.cat([g.flatten() for g in mixed])
    flat_exact = torch.cat([g.flatten() for g in exact])
    assert torch.nn.functional.cosine_similarity(flat_mixed, flat_exact, dim=0) > 0.9


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bfloat16"])
def test_one_update_on_the_gpu_lowers_the_query_loss(amp: bool) -> None:
    tasks = toy_tasks(4)
    learner = MetaLearner(tiny_model("acdc-net"), LR, first_order=False).to(CUDA)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before = meta_train_step(learner, tasks, optimizer, STEPS, CUDA, amp).loss
    after = meta_train_step(learner, tasks, optimizer, STEPS, CUDA, amp).loss
    assert after < before


def test_evaluator_and_api_on_the_gpu_equal_the_cpu(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run").root
    on_cpu, on_gpu = load(run, device="cpu"), load(run, device="cuda")
    assert next(on_gpu.meta.parameters()).is_cuda
    sampler = evaluation_episodes(on_cpu)
    cpu_result = evaluate(on_cpu, sampler, 8, progress=False)
    gpu_result = evaluate(on_gpu, sampler, 8, progress=False)
    # accuracies are counts of argmax hits: a near-tie may flip one query in a task
    np.testing.assert_allclose(gpu_result.accuracies, cpu_result.accuracies, atol=1.5 / 20)
    assert all(p.grad is None for p in on_gpu.meta.parameters())

    support_x, support_y, query_x, _, _ = sampler.episode(0)
    before = copy.deepcopy(on_gpu.meta.state_dict())
    logits_gpu = on_gpu.adapt(support_x, support_y)(query_x.cuda())
    logits_cpu = on_cpu.adapt(support_x, support_y)(query_x)
    assert logits_gpu.is_cuda
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=1e-3, atol=1e-3)
    for key, value in on_gpu.meta.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_episode_loader_pins_memory_by_default() -> None:
    sampler = EpisodeSampler(synthetic("train"), ways=5, shots=1, queries=2, seed=0)
    episode = next(iter(episode_loader(sampler, 1, num_workers=0)))
    assert all(t.is_pinned() for t in episode[:4])


def test_a_run_trained_on_the_gpu_resumes_and_loads_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With cuDNN's deterministic kernels, a resumed run is bit for bit the uninterrupted
    one on the GPU too (by default cuDNN may pick kernels that add in a varying order, and
    Adam turns the noise in the near-zero gradients of the biases before batch norm into
    steps of about its learning rate)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    whole = train(tiny(device="cuda"), tmp_path / "whole", progress=False)
    train(tiny(device="cuda"), tmp_path / "parts", stop_after=3, progress=False)
    parts = train(tiny(device="cuda"), tmp_path / "parts", resume=True, progress=False)
    assert whole.finished and parts.finished and parts.step == whole.step
    uninterrupted, resumed = parameters(tmp_path / "whole"), parameters(tmp_path / "parts")
    for name, value in uninterrupted.items():
        assert value.device.type == "cpu", "checkpoint tensors are stored on the CPU"
        assert torch.equal(resumed[name], value), name
    learner = load(tmp_path / "whole", device="cpu")
    images = torch.rand(5, learner.channels, learner.image_size, learner.image_size)
    assert learner.predict(images, torch.arange(5), images).shape == (5,)


def batched_meta_gradients(
    conv: str, first_order: bool, device: torch.device, amp: bool = False
) -> tuple[StepStats, list[torch.Tensor]]:
    """:func:`meta_gradients` by the batched engine (the 16 px toy tasks, pinned on CUDA as
    the loader pins them)."""
    learner = MetaLearner(tiny_model(conv), LR, first_order).to(device)
    tasks = toy_tasks()
    if device.type == "cuda":
        tasks = [Episode(*(t.pin_memory() for t in task)) for task in tasks]
    frozen = torch.optim.SGD(learner.parameters(), lr=0.0)
    stats = batched_train_step(BatchedMAML(learner), tasks, frozen, STEPS, amp=amp)
    return stats, [p.grad.cpu() for p in learner.parameters()]


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("conv", ["plain", "acdc-net"])
def test_the_batched_engine_on_the_gpu_equals_the_learn2learn_engine(
    conv: str, first_order: bool
) -> None:
    want_stats, want = meta_gradients(conv, first_order, torch.device("cpu"))
    got_stats, got = batched_meta_gradients(conv, first_order, CUDA)
    assert got_stats.loss == pytest.approx(want_stats.loss, rel=1e-4)
    for mine, theirs in zip(got, want):
        torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-4)
    # bfloat16: as close to float32's direction as the learn2learn engine's own amp
    # (cosine 0.93 plain, 0.80 acdc-net for both engines on these tasks, on the CPU)
    _, batched_amp = batched_meta_gradients(conv, first_order, CUDA, amp=True)
    _, l2l_amp = meta_gradients(conv, first_order, CUDA, amp=True)
    exact = torch.cat([g.flatten() for g in want])

    def cosine(grads: list[torch.Tensor]) -> float:
        flat = torch.cat([g.flatten() for g in grads])
        return float(torch.nn.functional.cosine_similarity(flat, exact, dim=0))

    assert cosine(batched_amp) > cosine(l2l_amp) - 0.1


def test_batched_evaluation_on_the_gpu_equals_the_cpu(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    on_cpu = load(run.root, device="cpu")
    on_gpu = load(run.root, device="cuda")
    sampler = evaluation_episodes(on_cpu)
    want = evaluate(on_cpu, sampler, 20, progress=False, engine="learn2learn")
    got = evaluate(on_gpu, sampler, 20, progress=False, engine="batched")
    assert np.abs(got.accuracies - want.accuracies).max() <= 1 / 20  # one near-tie at most
    assert on_gpu.tasks_per_batch(*sampler.episode(0)[:2]) > 1


# ------------------------------------------------------------- whole-step CUDA graphs


@pytest.fixture
def deterministic_cudnn(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's deterministic kernels: captured and eager steps then differ by the capturable
    Adam's rounding alone, not by the summation order of atomics (see the resume test)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


def captured_steps(
    conv: str, first_order: bool, graphed: bool, calls: int = 3
) -> tuple[list[StepStats], MetaLearner]:
    """``calls`` batched meta-updates on the GPU with a capturable Adam, captured (the
    first call captures, the others replay) or eager."""
    learner = MetaLearner(tiny_model(conv), LR, first_order).to(CUDA)
    optimizer = adam(learner.parameters(), 1e-3, capturable=True)
    engine = BatchedMAML(learner)
    step = GraphedTrainStep(engine, optimizer, STEPS)
    tasks = [Episode(*(t.pin_memory() for t in task)) for task in toy_tasks()]
    seeds = [11, 12]
    stats = [
        step(tasks, seeds)
        if graphed
        else batched_train_step(engine, tasks, optimizer, STEPS, task_seeds=seeds)
        for _ in range(calls)
    ]
    return stats, learner


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("conv", ["plain", "acdc-net"])
@pytest.mark.usefixtures("deterministic_cudnn")
def test_a_captured_meta_update_equals_the_eager_one(conv: str, first_order: bool) -> None:
    eager_stats, eager = captured_steps(conv, first_order, graphed=False)
    graphed_stats, graphed = captured_steps(conv, first_order, graphed=True)
    for got, want in zip(graphed_stats, eager_stats):
        assert got.loss == pytest.approx(want.loss, rel=1e-5)
        assert got.accuracy == want.accuracy
    for got, want in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
def test_captured_meta_gradients_equal_the_cpus(first_order: bool) -> None:
    """The first replay's meta-gradient (taken at the initial weights, before the replay's
    Adam step) against the learn2learn engine's on the CPU."""
    _, want = meta_gradients("acdc-net", first_order, torch.device("cpu"))
    _, learner = captured_steps("acdc-net", first_order, graphed=True, calls=1)
    for got, theirs in zip(learner.parameters(), want):
        assert got.grad is not None
        torch.testing.assert_close(got.grad.cpu(), theirs, rtol=1e-3, atol=1e-4)


@pytest.mark.usefixtures("deterministic_cudnn")
def test_a_run_with_cuda_graphs_learns_as_one_without(tmp_path: Path) -> None:
    """Captured and eager runs differ by float rounding only (the capturable Adam's bias
    correction is computed on the GPU); the captured run's log names no fallback."""
    captured = tmp_path / "captured"
    train(tiny(device="cuda", cuda_graphs="on"), captured, progress=False)
    train(tiny(device="cuda", cuda_graphs="off"), tmp_path / "eager", progress=False)
    assert "CUDA graphs off" not in RunFolder(captured).log.read_text()
    for name, value in parameters(tmp_path / "eager").items():
        torch.testing.assert_close(parameters(captured)[name], value, rtol=1e-3, atol=1e-4)


@pytest.mark.usefixtures("deterministic_cudnn")
def test_captured_evaluation_equals_the_eager_one(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    graphed = load(run.root, device="cuda")
    eager = load(run.root, device="cuda")
    eager.config = dataclasses.replace(eager.config, cuda_graphs="off")
    sampler = evaluation_episodes(eager)
    for _ in range(2):  # the second evaluation replays what the first captured
        got = evaluate(graphed, sampler, 20, progress=False, engine="batched")
        want = evaluate(eager, sampler, 20, progress=False, engine="batched")
        assert np.abs(got.accuracies - want.accuracies).max() <= 1 / 20  # a near-tie at most
    engine = graphed._batched_engine()
    assert engine._graphs.captured >= 1 and engine._graphs.off_because is None
