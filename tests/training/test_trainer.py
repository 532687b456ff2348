"""The training loop: run folder, bit-identical resume, Ctrl-C, NaN, checkpoints, CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import metaacdc.training.trainer as trainer_module
from metaacdc.cli import main
from metaacdc.config import TrainConfig, resolve
from metaacdc.evaluation.evaluator import evaluate
from metaacdc.runs.folder import RunFolder
from metaacdc.training import TrainingDivergedError, train
from metaacdc.training.step import meta_train_step


def tiny(**overrides: object) -> TrainConfig:
    settings = dict(
        image_size=16,
        synthetic_images_per_class=10,
        meta_updates=6,
        val_every=2,
        val_tasks=3,
        workers=0,
        inner_steps=1,
        queries=2,
        test_queries=2,
        meta_batch=2,
        conv="acdc-net",
        device="cpu",  # the bit-identical guarantees are the CPU's
    )
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def parameters(run: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(RunFolder(run).last, weights_only=True)
    return payload["model"]


def test_run_folder_holds_config_metrics_log_and_checkpoints(tmp_path: Path) -> None:
    summary = train(tiny(), tmp_path / "run", progress=False)
    folder = RunFolder(tmp_path / "run")
    assert summary.finished and summary.step == 6
    assert yaml.safe_load(folder.config.read_text())["meta_updates"] == 6
    metrics = pd.read_csv(folder.metrics)
    assert list(metrics["step"]) == [2, 4, 6]
    assert metrics["val_accuracy"].between(0, 1).all()
    assert "meta-update 6" in folder.log.read_text()
    payload = torch.load(folder.best, weights_only=True)  # no pickled code
    assert payload["step"] == summary.best_step
    assert not list(folder.last.parent.glob(".*")), "no temporary files left behind"


def assert_same_validations(run: Path, reference: Path) -> None:
    """``run`` validated at the same steps with the same accuracies as ``reference``, and
    kept the same best checkpoint."""
    mine, theirs = pd.read_csv(RunFolder(run).metrics), pd.read_csv(RunFolder(reference).metrics)
    assert list(mine["step"]) == list(theirs["step"])
    assert list(mine["val_accuracy"]) == list(theirs["val_accuracy"])
    best, reference_best = (
        torch.load(RunFolder(folder).best, weights_only=True) for folder in (run, reference)
    )
    assert best["step"] == reference_best["step"]
    assert all(torch.equal(best["model"][n], reference_best["model"][n]) for n in best["model"])


def test_resume_after_stop_is_bit_identical(tmp_path: Path) -> None:
    train(tiny(), tmp_path / "whole", progress=False)
    first = train(tiny(), tmp_path / "parts", stop_after=3, progress=False)
    assert first.step == 3 and not first.finished
    train(tiny(), tmp_path / "parts", resume=True, progress=False)
    whole, parts = parameters(tmp_path / "whole"), parameters(tmp_path / "parts")
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
    # no extra validation where the first part stopped (step 3): same best checkpoint
    assert_same_validations(tmp_path / "parts", tmp_path / "whole")


def interrupt_validation(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    """Ctrl-C during the ``number``-th validation of the next training."""
    calls = {"n": 0}

    def interrupted(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == number:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "evaluate", interrupted)


def test_ctrl_c_during_validation_runs_it_on_resume(tmp_path: Path, monkeypatch) -> None:
    train(tiny(), tmp_path / "whole", progress=False)
    interrupt_validation(monkeypatch, 2)  # the validation of meta-update 4
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path / "killed", progress=False)
    payload = torch.load(RunFolder(tmp_path / "killed").last, weights_only=True)
    assert payload["step"] == 4 and payload["owed_validation"] is not None
    assert list(pd.read_csv(RunFolder(tmp_path / "killed").metrics)["step"]) == [2]
    monkeypatch.undo()
    train(tiny(), tmp_path / "killed", resume=True, progress=False)
    assert_same_validations(tmp_path / "killed", tmp_path / "whole")
    payload = torch.load(RunFolder(tmp_path / "killed").last, weights_only=True)
    assert payload["owed_validation"] is None


def test_interrupted_final_validation_runs_on_resume(tmp_path: Path, monkeypatch) -> None:
    """Nothing is left to train, but the last validation (and best checkpoint) still is."""
    train(tiny(), tmp_path / "whole", progress=False)
    interrupt_validation(monkeypatch, 3)  # the validation of meta-update 6, the last
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path / "killed", progress=False)
    monkeypatch.undo()
    summary = train(tiny(), tmp_path / "killed", resume=True, progress=False)
    assert summary.finished
    assert_same_validations(tmp_path / "killed", tmp_path / "whole")


def test_ctrl_c_saves_the_last_completed_update(tmp_path: Path, monkeypatch) -> None:
    train(tiny(), tmp_path / "whole", progress=False)
    calls = {"n": 0}

    def interrupted(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return meta_train_step(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "meta_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path / "killed", progress=False)
    assert torch.load(RunFolder(tmp_path / "killed").last, weights_only=True)["step"] == 3
    monkeypatch.undo()
    train(tiny(), tmp_path / "killed", resume=True, progress=False)
    whole, killed = parameters(tmp_path / "whole"), parameters(tmp_path / "killed")
    assert all(torch.equal(whole[n], killed[n]) for n in whole)


def test_hard_kill_loses_at_most_the_checkpoint_interval(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}

    def killed(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == 4:
            raise SystemExit("killed")  # nothing is saved on the way out, as with SIGKILL
        return meta_train_step(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "meta_train_step", killed)
    with pytest.raises(SystemExit):  # no validation before the kill (val_every=5)
        train(tiny(val_every=5), tmp_path / "run", progress=False, checkpoint_every_s=0.0)
    assert torch.load(RunFolder(tmp_path / "run").last, weights_only=True)["step"] == 3


def test_nan_loss_stops_naming_the_step_and_keeps_last_good(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}

    def exploding(*args: object, **kwargs: object):
        calls["n"] += 1
        stats = meta_train_step(*args, **kwargs)  # type: ignore[arg-type]
        return stats if calls["n"] < 5 else type(stats)(float("nan"), stats.accuracy)

    monkeypatch.setattr(trainer_module, "meta_train_step", exploding)
    with pytest.raises(TrainingDivergedError, match="meta-update 5"):
        train(tiny(), tmp_path / "run", progress=False)
    assert torch.load(RunFolder(tmp_path / "run").last, weights_only=True)["step"] == 4


@pytest.mark.parametrize(
    "variant",
    [{"meta_sgd": True}, {"adapt": "head"}, {"first_order": True}, {"conv": "ks-net"}],
    ids=["meta-sgd", "head-only", "first-order", "kernel-sharing"],
)
def test_variants_train(tmp_path: Path, variant: dict) -> None:
    summary = train(tiny(meta_updates=2, **variant), tmp_path / "run", progress=False)
    assert summary.finished and summary.best_val is not None
    payload = torch.load(RunFolder(tmp_path / "run").last, weights_only=True)
    assert all(torch.isfinite(t).all() for t in payload["model"].values())


def test_existing_run_needs_resume_and_same_settings(tmp_path: Path) -> None:
    train(tiny(meta_updates=2), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        train(tiny(meta_updates=2), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"other settings \(inner_lr: 0.01 -> 0.5\)"):
        train(tiny(meta_updates=2, inner_lr=0.5), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(tiny(), tmp_path / "other", resume=True, progress=False)


def test_config_file_then_command_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    settings = tiny().to_dict()
    del settings["meta_updates"]
    config.write_text(yaml.safe_dump({**settings, "meta-updates": 2, "seed": 7}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--seed", "3", "--out", str(out)]) == 0
    saved = yaml.safe_load(RunFolder(out).config.read_text())
    assert saved["seed"] == 3 and saved["meta_updates"] == 2
    assert "finished" in capsys.readouterr().out


def test_config_file_errors(tmp_path: Path) -> None:
    from metaacdc.config import load_config_file

    twice = tmp_path / "twice.yaml"
    twice.write_text("meta-updates: 2\nmeta_updates: 3\n")
    with pytest.raises(ValueError, match="meta_updates is given twice"):
        load_config_file(twice)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("backbone = 'conv4'\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) learning_rate"):
        TrainConfig.from_dict(load_config_file(unknown), source=str(unknown))
    broken = tmp_path / "broken.yaml"
    broken.write_text("backbone: [conv4\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config_file(broken)


def test_acdc_flag_maps_to_conv_spec(tmp_path: Path) -> None:
    from metaacdc.cli import build_parser
    from metaacdc.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--backbone", "resnet18", "--acdc", "net"])
    assert config_from_args(args).conv == "acdc-net"
    args = build_parser().parse_args(["train", "--acdc", "net", "--group-size", "32"])
    assert resolve(config_from_args(args)).conv == "acdc-g-net"  # resolve names the g- kind


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backbone", "resnet50"], "backbone='resnet50' is not valid"),
        (["--data", "/no/such/folder", "--dataset", "miniimagenet"], "--data path not found"),
        (["--dataset", "imagenet"], "dataset='imagenet' is not valid"),
        (["--acdc", "all"], "--acdc='all' is not valid"),
        (["--config", "/no/such.yaml"], "config file not found"),
        (["--inner-lr", "-1"], "inner_lr=-1.0 is not valid"),
        (["--engine", "jax"], "engine='jax' is not valid"),
        (["--device", "cuda:7"], "not available"),  # no CUDA, or fewer than 8 GPUs
    ],
)
def test_cli_errors_exit_2_with_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metaacdc",
            "train",
            "--image-size",
            "16",
            "--out",
            str(tmp_path / "r"),
            *argv,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_cli_refuses_incompatible_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [sys.executable, "-m", "metaacdc", "train", "--out", str(tmp_path / "run"), "--resume"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "not a readable metaacdc checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_configuration_learns_well_above_chance(tmp_path: Path) -> None:
    """`make demo`'s settings (configs/demo.yaml): 200 updates reach well above 20 % chance."""
    from metaacdc.config import load_config_file
    from tests.conftest import REPO

    config = TrainConfig.from_dict(load_config_file(REPO / "configs" / "demo.yaml"))
    summary = train(config, tmp_path / "run", progress=False)
    assert summary.best_val is not None and summary.best_val > 0.35


def test_sigterm_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "metaacdc", "train", "--image-size", "16"]
    command += ["--meta-updates", "100000", "--inner-steps", "1", "--out", str(run)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    log = run / "log.txt"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "starting" in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    time.sleep(2.0)  # a few meta-updates
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "interrupted; saved meta-update" in log.read_text()
    assert RunFolder(run).last.is_file()
