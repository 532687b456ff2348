"""The batched engine in training: 20 meta-updates give the learn2learn engine's losses
(float64), the run folder records the engine, a resumed run keeps it, and ``auto`` picks
by device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from metaacdc.backbones import create_backbone
from metaacdc.convs import conv_kind
from metaacdc.data import Episode, EpisodeSampler
from metaacdc.data.sampler import task_seed
from metaacdc.errors import ConfigError
from metaacdc.maml.batched import BatchedMAML
from metaacdc.maml.engine import check_engine_supports, choose_engine
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.folder import RunFolder
from metaacdc.training import train
from metaacdc.training.step import StepStats, batched_train_step, meta_train_step
from tests.tiny_runs import synthetic
from tests.training.test_trainer import tiny

UPDATES, META_BATCH, INNER_STEPS, SIZE = 20, 2, 2, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def float64_learner(conv: str, first_order: bool) -> MetaLearner:
    torch.manual_seed(0)
    model = create_backbone(
        "conv4", conv_kind(conv, atom_drop=0.1), num_classes=5, image_size=SIZE
    ).double()
    return MetaLearner(model, 0.1, first_order).train()


def meta_batches() -> list[list[Episode]]:
    sampler = EpisodeSampler(synthetic("train"), 5, 1, 2, seed=0)
    batches = []
    for update in range(UPDATES):
        batch = []
        for index in range(META_BATCH):
            episode = sampler.episode(update * META_BATCH + index)
            batch.append(
                Episode(
                    *(
                        t[..., :SIZE, :SIZE].double() if t.is_floating_point() else t
                        for t in episode
                    )
                )
            )
        batches.append(batch)
    return batches


def losses_of(engine: str, conv: str, first_order: bool) -> tuple[list[StepStats], MetaLearner]:
    meta = float64_learner(conv, first_order)
    optimizer = torch.optim.Adam(meta.parameters(), lr=1e-3)
    batched = BatchedMAML(meta)
    stats = []
    for update, tasks in enumerate(meta_batches()):
        seeds = [task_seed(0, update * META_BATCH + i) for i in range(META_BATCH)]
        if engine == "batched":
            step = batched_train_step(batched, tasks, optimizer, INNER_STEPS, task_seeds=seeds)
        else:
            step = meta_train_step(
                meta, tasks, optimizer, INNER_STEPS, torch.device("cpu"), task_seeds=seeds
            )
        stats.append(step)
    return stats, meta


@pytest.mark.parametrize(
    ("conv", "first_order"),
    [("plain", False), ("acdc-net", False), ("acdc-net", True)],
    ids=["plain-second-order", "acdc-net-second-order", "acdc-net-first-order"],
)
def test_twenty_meta_updates_give_the_learn2learn_losses(conv: str, first_order: bool) -> None:
    """Float64, atom-drop on (each task's masks drawn from its seed by both engines): the
    training losses and accuracies of 20 meta-updates, and the weights after them, agree to
    float rounding."""
    reference, reference_meta = losses_of("learn2learn", conv, first_order)
    batched, batched_meta = losses_of("batched", conv, first_order)
    want = torch.tensor([s.loss for s in reference], dtype=torch.float64)
    got = torch.tensor([s.loss for s in batched], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # the steps report float32
    assert [s.accuracy for s in batched] == [s.accuracy for s in reference]
    assert len(set(want.tolist())) == UPDATES, "the losses move: the runs are not trivial"
    for (name, mine), theirs in zip(batched_meta.named_parameters(), reference_meta.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-7, atol=1e-9, msg=name)


def test_auto_is_batched_on_cuda_and_learn2learn_on_the_cpu() -> None:
    assert choose_engine("auto", torch.device("cpu")) == "learn2learn"
    assert choose_engine("auto", torch.device("cuda", 0)) == "batched"
    assert choose_engine("batched", torch.device("cpu")) == "batched"
    with pytest.raises(ConfigError, match="engine"):
        choose_engine("jax", torch.device("cpu"))
    with pytest.raises(ConfigError, match="--processes 1"):
        check_engine_supports("batched", processes=2)


def engine_of(run: Path) -> str:
    engine: str = yaml.safe_load(RunFolder(run).config.read_text())["engine"]
    return engine


def test_the_run_folder_records_the_engine_and_resume_keeps_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(engine="batched", meta_updates=4), run, stop_after=2, progress=False)
    assert engine_of(run) == "batched"
    assert torch.load(RunFolder(run).last, weights_only=True)["config"]["engine"] == "batched"
    with pytest.raises(ConfigError, match="engine: 'batched' -> 'learn2learn'"):
        train(tiny(engine="learn2learn", meta_updates=4), run, resume=True, progress=False)
    summary = train(tiny(meta_updates=4), run, resume=True, progress=False)  # engine auto
    assert summary.finished and engine_of(run) == "batched"
    auto = tmp_path / "auto"
    train(tiny(meta_updates=2), auto, progress=False)
    assert engine_of(auto) == "learn2learn"  # what auto is on the CPU


def test_a_run_saved_before_engines_existed_resumes_with_learn2learn(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(engine="learn2learn", meta_updates=4), run, stop_after=2, progress=False)
    payload = torch.load(RunFolder(run).last, weights_only=True)
    del payload["config"]["engine"]
    torch.save(payload, RunFolder(run).last)
    train(tiny(meta_updates=4), run, resume=True, progress=False)
    assert engine_of(run) == "learn2learn"


@pytest.mark.parametrize(
    "variant",
    [{"meta_sgd": True}, {"adapt": "head"}, {"first_order": True}, {"conv": "ks-net"}],
    ids=["meta-sgd", "head-only", "first-order", "kernel-sharing"],
)
def test_the_batched_engine_trains_every_variant_like_learn2learn(
    tmp_path: Path, variant: dict
) -> None:
    """Through the trainer (float32): the training loss and accuracy of each meta-update
    are the learn2learn run's up to float32 rounding. (Not the weights: Adam turns the
    rounding noise of gradients that are zero in exact arithmetic, a conv bias before batch
    norm, into full steps, which batch norm then cancels.)"""
    metrics = {}
    for engine in ("learn2learn", "batched"):
        run = tmp_path / engine
        train(tiny(meta_updates=2, val_every=1, engine=engine, **variant), run, progress=False)
        metrics[engine] = pd.read_csv(RunFolder(run).metrics)
    got, want = metrics["batched"], metrics["learn2learn"]
    assert list(got.step) == list(want.step) == [1, 2]
    # the second loss is taken after one Adam step, which enlarges the rounding noise (see
    # above): 2.4e-4 apart on a CPU with AVX2 kernels, within 1e-4 where it was written
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-3)
    np.testing.assert_array_equal(got.accuracy, want.accuracy)
