"""What training does with a run folder and with values that go wrong: the folder alone is
enough to resume, the data names the dataset, a diverged run says what it kept, and a
checkpoint never holds a non-finite weight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import metaacdc.training.trainer as trainer_module
from metaacdc.api import load
from metaacdc.config import TrainConfig, resolve
from metaacdc.config.schema import RULES
from metaacdc.errors import ConfigError, NonFiniteError
from metaacdc.runs.experiment import evaluation_transform, training_transform
from metaacdc.runs.folder import RunFolder
from metaacdc.training import TrainingDivergedError, train
from metaacdc.training.step import meta_train_step
from tests.bad_inputs.templates import TINY_RUN, omniglot_cache
from tests.command_line import run_in_process

pytestmark = pytest.mark.usefixtures("one_thread")


def _step(run: Path, name: str = "last") -> int:
    return int(
        torch.load(RunFolder(run).root / "checkpoints" / f"{name}.pt", weights_only=True)["step"]
    )


def test_every_setting_has_a_rule() -> None:
    assert set(RULES) == set(TrainConfig.__dataclass_fields__)


def test_resume_reads_the_settings_from_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = {k: v for k, v in TINY_RUN.to_dict().items() if v is not None}
    Path("tiny.yaml").write_text(yaml.safe_dump(settings))
    first = run_in_process(
        ["train", "--config", "tiny.yaml", "--out", "run", "--stop-after", "1"], capfd
    )
    assert first.code == 0 and "stopped at 1" in first.out
    # no setting repeated; a runtime setting may change
    again = run_in_process(["train", "--out", "run", "--resume", "--workers", "1"], capfd)
    assert again.code == 0, again.err
    assert "finished" in again.out
    assert _step(Path("run")) == TINY_RUN.meta_updates
    assert yaml.safe_load(Path("run/config.yaml").read_text())["workers"] == 0  # as trained


def test_the_cache_names_the_dataset_and_its_protocol(tmp_path: Path) -> None:
    omniglot_cache(tmp_path / "cache")
    config = resolve(TrainConfig(data=str(tmp_path / "cache")))
    assert config.dataset == "omniglot" and config.image_size == 28
    assert training_transform(config) is None  # no colour-image augmentation
    omniglot = resolve(TrainConfig(dataset="omniglot", data=str(tmp_path / "cache")))
    assert type(evaluation_transform(config)) is type(evaluation_transform(omniglot))
    synthetic = resolve(TrainConfig())
    assert type(evaluation_transform(config)) is not type(evaluation_transform(synthetic))


def test_a_run_on_a_cache_records_its_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    omniglot_cache(tmp_path / "cache")
    tiny = ["--ways", "2", "--queries", "1", "--test-queries", "1", "--val-tasks", "1"]
    argv = ["train", "--data", "cache", "--out", "run", "--meta-updates", "1", "--workers", "0"]
    outcome = run_in_process([*argv, *tiny, "--inner-steps", "1"], capfd)
    assert outcome.code == 0, outcome.err
    assert yaml.safe_load(Path("run/config.yaml").read_text())["dataset"] == "omniglot"


def _diverging(at: int, poison_weights: bool = False):
    """meta_train_step whose ``at``-th call reports a NaN loss (or, with ``poison_weights``,
    leaves a NaN weight behind a finite loss)."""
    calls = {"n": 0}

    def step(learner, *args: object, **kwargs: object):
        calls["n"] += 1
        stats = meta_train_step(learner, *args, **kwargs)  # type: ignore[arg-type]
        if calls["n"] < at:
            return stats
        if poison_weights:
            with torch.no_grad():
                next(learner.parameters()).fill_(float("nan"))
            return stats
        return type(stats)(float("nan"), stats.accuracy)

    return step


def test_a_first_update_nan_says_nothing_was_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "meta_train_step", _diverging(at=1))
    with pytest.raises(
        TrainingDivergedError, match="meta-update 1; stopped, no checkpoint was saved"
    ):
        train(TINY_RUN, tmp_path / "run", progress=False)
    assert not RunFolder(tmp_path / "run").last.exists()
    assert "starting meta-update 0" in RunFolder(tmp_path / "run").log.read_text()  # kept


def test_a_later_nan_names_the_checkpoint_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "meta_train_step", _diverging(at=2))
    with pytest.raises(
        TrainingDivergedError, match=r"the last finite checkpoint \(meta-update 1\) is kept"
    ):
        train(TINY_RUN, tmp_path / "run", progress=False)
    assert _step(tmp_path / "run") == 1


def test_a_non_finite_weight_is_never_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "meta_train_step", _diverging(at=2, poison_weights=True))
    with pytest.raises(TrainingDivergedError, match=r"weight .* is not finite at meta-update 2"):
        train(TINY_RUN, tmp_path / "run", progress=False)
    assert _step(tmp_path / "run") == 1 and _step(tmp_path / "run", "best") == 1
    payload = torch.load(RunFolder(tmp_path / "run").last, weights_only=True)
    assert all(torch.isfinite(t).all() for t in payload["model"].values())


def test_an_edited_config_is_refused_by_load(tmp_path: Path) -> None:
    train(TINY_RUN, tmp_path / "run", progress=False)
    load(tmp_path / "run")  # as saved
    config = RunFolder(tmp_path / "run").config
    config.write_text(config.read_text().replace("test_inner_steps: 2", "test_inner_steps: 9"))
    with pytest.raises(ConfigError, match=r"edited .*\(test_inner_steps: 2 -> 9\)"):
        load(tmp_path / "run")
    load(tmp_path / "run" / "checkpoints" / "best.pt")  # a checkpoint file stands alone


def test_a_diverging_validation_stops_the_run_keeping_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = trainer_module.evaluate

    def diverging(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == 2:  # the second validation's adaptation runs away
            raise NonFiniteError("the adaptation diverged: the adapted weights hold NaN")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "evaluate", diverging)
    with pytest.raises(
        TrainingDivergedError,
        match=r"validation failed \(the adaptation diverged.*\) at meta-update 2; stopped, "
        r"the last finite checkpoint \(meta-update 1\) is kept",
    ):
        train(TINY_RUN, tmp_path / "run", progress=False)
    assert _step(tmp_path / "run") == 1
