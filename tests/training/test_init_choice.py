"""The run folder records the initialisation scheme a run drew its weights with, and a
resumed run keeps it: ``auto`` is ``pytorch`` for a new run and the saved scheme on resume
(``closerlook`` for runs saved before schemes existed); naming another is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from metaacdc.errors import ConfigError
from metaacdc.runs.folder import RunFolder
from metaacdc.training import train
from tests.training.test_trainer import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def init_of(run: Path) -> str:
    init: str = yaml.safe_load(RunFolder(run).config.read_text())["init"]
    return init


def test_a_new_run_records_the_scheme_auto_chose_and_resume_keeps_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(meta_updates=4), run, stop_after=2, progress=False)
    assert init_of(run) == "pytorch"
    assert torch.load(RunFolder(run).last, weights_only=True)["config"]["init"] == "pytorch"
    with pytest.raises(ConfigError, match="init: 'pytorch' -> 'closerlook'"):
        train(tiny(init="closerlook", meta_updates=4), run, resume=True, progress=False)
    assert train(tiny(meta_updates=4), run, resume=True, progress=False).finished


def test_a_run_saved_before_schemes_existed_resumes_with_closerlook(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(init="closerlook", meta_updates=4), run, stop_after=2, progress=False)
    payload = torch.load(RunFolder(run).last, weights_only=True)
    del payload["config"]["init"]
    torch.save(payload, RunFolder(run).last)
    with pytest.raises(ConfigError, match="init: 'closerlook' -> 'pytorch'"):
        train(tiny(init="pytorch", meta_updates=4), run, resume=True, progress=False)
    assert train(tiny(meta_updates=4), run, resume=True, progress=False).finished
    assert init_of(run) == "closerlook"


def test_the_two_schemes_start_from_different_weights(tmp_path: Path) -> None:
    """Same seed, other scheme: other kernels (the scheme is not a label only)."""
    weights = {}
    for init in ("pytorch", "closerlook"):
        run = tmp_path / init
        train(tiny(init=init, conv="plain", meta_updates=1), run, progress=False)
        weights[init] = torch.load(RunFolder(run).last, weights_only=True)["model"]
    first = next(k for k in weights["pytorch"] if k.endswith("0.0.weight"))
    ratio = weights["closerlook"][first].std() / weights["pytorch"][first].std()
    # first conv, 3 input channels: closerlook std sqrt(2 / (9 * 64)), pytorch sqrt(1 / (3 * 27))
    assert float(ratio) == pytest.approx(((2 / 576) / (1 / 81)) ** 0.5, rel=0.1)
