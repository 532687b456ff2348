"""Fixtures shared by the evaluator's tests: one tiny untrained run, loaded once per module,
and its evaluation episodes."""

from __future__ import annotations

import pytest

from metaacdc.api import Learner, load
from metaacdc.data import EpisodeSampler
from tests.tiny_runs import evaluation_episodes, make_run


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory) -> Learner:
    return load(make_run(tmp_path_factory.mktemp("run")).root, device="cpu")


@pytest.fixture(scope="module")
def sampler(learner: Learner) -> EpisodeSampler:
    return evaluation_episodes(learner)
