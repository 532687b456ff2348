"""Checkpoints written before data facts were a dataclass (a plain dict under "data") still
load and resume, and the writer still stores exactly that format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import metaacdc
from metaacdc.data import CachedSplit, DataFacts, synthetic_split
from metaacdc.maml.learner import MetaLearner
from metaacdc.runs.checkpoint import FORMAT
from metaacdc.runs.experiment import build_model
from metaacdc.runs.folder import RunFolder, checkpoint_payload
from metaacdc.training import train
from tests.tiny_runs import IMAGE_SIZE, synthetic, tiny_config
from tests.training.test_trainer import tiny

#: tiny models, whose small operators only lose to thread hand-offs (see one_thread in
#: tests/conftest.py); every comparison here is between runs of this process
pytestmark = pytest.mark.usefixtures("one_thread")


def old_data_facts(split: CachedSplit) -> dict[str, Any]:
    """``data_facts`` as it was before :class:`DataFacts`: what old checkpoints hold."""
    meta = split.meta
    return {
        "source": meta.source,
        "image_size": meta.image_size,
        "channels": meta.channels,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "inverted": bool(meta.preprocessing.get("inverted", False)),
    }


def write_old_checkpoint(path: Path, payload: dict[str, Any], data: dict[str, Any]) -> None:
    """``payload`` saved as the old ``save_learner`` saved it: one plain dict, data facts
    a plain dict of lists, written with ``torch.save`` directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**payload, "format": FORMAT, "data": data}, path)


def test_an_old_checkpoint_loads(tmp_path: Path) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    meta = MetaLearner(build_model(config, 3), config.inner_lr, bool(config.first_order))
    folder = RunFolder(tmp_path / "run")
    folder.write_config(config)
    old = {
        "config": config.to_dict(),
        "step": 0,
        "model": meta.state_dict(),
        "best_val": None,
        "best_step": None,
        "owed_validation": None,
    }
    write_old_checkpoint(folder.best, old, old_data_facts(synthetic("train")))

    learner = metaacdc.load(folder.root, device="cpu")
    assert learner.data == DataFacts.from_split(synthetic("train"))
    assert (learner.channels, learner.image_size) == (3, IMAGE_SIZE)
    pictures = synthetic("test").images
    support = learner.preprocess([pictures[0], pictures[12]])
    assert learner.predict(support, torch.tensor([0, 1]), support).shape == (2,)


def test_the_writer_keeps_the_old_plain_format() -> None:
    config = tiny_config()
    meta = MetaLearner(build_model(config, 3), config.inner_lr, bool(config.first_order))
    payload = checkpoint_payload(config, DataFacts.from_split(synthetic("train")), 0, meta)
    assert payload["data"] == old_data_facts(synthetic("train"))
    assert type(payload["data"]) is dict and type(payload["data"]["mean"]) is list


def test_an_old_run_folder_resumes(tmp_path: Path) -> None:
    config = tiny(conv="plain", meta_updates=2, val_every=1, val_tasks=1)
    run = tmp_path / "run"
    assert train(config, run, stop_after=1, progress=False).step == 1
    folder = RunFolder(run)
    split = synthetic_split("train", image_size=16, images_per_class=10)  # the run's
    for path in (folder.last, folder.best):  # rewritten as an old version wrote them
        saved = torch.load(path, weights_only=True)
        write_old_checkpoint(path, saved, old_data_facts(split))
    summary = train(config, run, resume=True, progress=False)
    assert summary.finished and summary.step == 2
    assert metaacdc.load(run, device="cpu").data == DataFacts.from_split(split)
