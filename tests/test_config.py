"""build_config: the one place a run's settings are built, from a file and overrides, for
the command line and Python alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaacdc.cli import build_parser
from metaacdc.cli.curve import _base_config
from metaacdc.cli.train import config_from_args
from metaacdc.config import TrainConfig, build_config, resolve
from metaacdc.errors import ConfigError
from tests.conftest import REPO

PRESETS = sorted((REPO / "configs").iterdir())


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("backbone: resnet10\nmeta-updates: 50\nseed: 7\nconv: acdc-net\n")
    return path


def test_defaults_then_file_then_overrides(settings: Path) -> None:
    assert build_config() == TrainConfig()
    from_file = build_config(settings)
    assert (from_file.backbone, from_file.meta_updates, from_file.seed) == ("resnet10", 50, 7)
    assert from_file.shots == 1  # a protocol default the file leaves alone
    config = build_config(settings, {"seed": 3, "inner-lr": 0.5})
    assert (config.backbone, config.meta_updates) == ("resnet10", 50)  # the file's
    assert (config.seed, config.inner_lr) == (3, 0.5)  # the overrides win
    assert build_config(overrides={"seed": 3}) == TrainConfig(seed=3)
    assert build_config(str(settings)) == from_file  # a path as a string


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("ways = 20\nimage-size = 28\n")
    assert build_config(path, {"ways": 5}) == TrainConfig(ways=5, image_size=28)


def test_unknown_settings_are_refused_naming_them_and_their_source(
    settings: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"^command line: unknown setting\(s\) colour, lr;"):
        build_config(settings, {"lr": 0.1, "colour": "blue"}, source="command line")
    with pytest.raises(ConfigError, match=r"^overrides: unknown setting\(s\) lr; accepted: "):
        build_config(overrides={"lr": 0.1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: unknown setting\(s\) learning_rate"):
        build_config(bad, {"seed": 1})
    with pytest.raises(ConfigError, match="overrides: setting meta_updates is given twice"):
        build_config(overrides={"meta-updates": 1, "meta_updates": 2})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        build_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("file", "overrides", "conv"),
    [
        ("conv: acdc-net\n", {"group_size": 32}, "acdc-g-net"),
        ("group_size: 16\n", {"conv": "acdc-block"}, "acdc-g-block"),
        ("group_size: 16\n", {"conv": "acdc-g-layer"}, "acdc-g-layer"),
        ("group_size: 16\n", {"conv": "ks-stage"}, "ks-stage"),
        ("group_size: 16\n", {}, "plain"),
        ("conv: acdc-net\n", {}, "acdc-net"),
    ],
)
def test_a_group_size_names_the_grouped_acdc_kind(
    tmp_path: Path, file: str, overrides: dict, conv: str
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(file)
    assert resolve(build_config(path, overrides)).conv == conv


@pytest.mark.parametrize(
    ("argv", "overrides"),
    [
        ([], {}),
        (["--seed", "3", "--first-order"], {"seed": 3, "first_order": True}),
        (["--second-order", "--no-augment"], {"first_order": False, "augment": False}),
        (["--acdc", "net", "--group-size", "32"], {"conv": "acdc-net", "group_size": 32}),
        (["--group-size", "32"], {"group_size": 32}),  # the file's acdc-net becomes g-net
        (["--kernel-sharing", "stage"], {"conv": "ks-stage"}),
        (["--acdc", "none"], {"conv": "plain"}),
        (
            ["--conv", "acdc-g-block", "--group-size", "8"],
            {"conv": "acdc-g-block", "group_size": 8},
        ),
    ],
)
def test_the_cli_and_python_build_the_same_config(
    settings: Path, argv: list[str], overrides: dict
) -> None:
    args = build_parser().parse_args(["train", "--config", str(settings), *argv])
    assert config_from_args(args) == build_config(settings, overrides)


def test_curve_base_settings_are_built_the_same_way(settings: Path) -> None:
    argv = ["curve", "--config", str(settings), "--ways", "20", "--inner-lr", "0.1"]
    args = build_parser().parse_args(argv)
    assert _base_config(args) == build_config(settings, {"ways": 20, "inner_lr": 0.1})


@pytest.mark.parametrize(
    ("dataset", "backbone", "size"),
    [
        ("omniglot", "conv4", 28),
        ("cifar-fs", "conv4", 32),
        ("fc100", "resnet10", 32),
        ("cub", "conv4", 84),
        ("cub", "resnet10", 224),
        ("miniimagenet", "resnet18", 224),
    ],
)
def test_small_image_datasets_train_at_their_own_size(
    dataset: str, backbone: str, size: int
) -> None:
    assert resolve(TrainConfig(dataset=dataset, backbone=backbone)).image_size == size


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dataset": "omniglot", "data_protocol": "lake"}, "data_protocol='lake'"),
        ({"dataset": "cub", "data_protocol": "vinyals"}, "omniglot only"),
        ({"init": "xavier"}, "init='xavier'"),
    ],
)
def test_protocol_and_init_choices_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(TrainConfig(**settings))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_shipped_preset_builds(preset: Path) -> None:
    """A preset the docs tell users to run must load: a key given twice (as once happened to
    configs/curve-cpu.yaml) is refused by the loader, so it would fail here first."""
    config = build_config(preset)
    assert config.dataset in {"omniglot", "miniimagenet", "synthetic"}
