"""The conv-kind registry: one parser of conv specs, and a user's kind accepted wherever a
built-in one is (Python, TrainConfig, YAML configs, the CLI, plugins)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from torch import nn

import metaacdc
from metaacdc.acdc import ACDC
from metaacdc.acdc import SHARES as ACDC_SHARES
from metaacdc.backbones import create_backbone
from metaacdc.cli import load_plugins, main
from metaacdc.config import TrainConfig, conv_kind_of, load_config_file, resolve
from metaacdc.convs import (
    ConvKind,
    ConvSpec,
    PlainConv,
    conv_kind,
    list_conv_kinds,
    register_conv_kind,
)
from metaacdc.convs.kernel_sharing import KernelSharing
from metaacdc.convs.sharing import SCOPES
from metaacdc.errors import ConfigError
from tests.convs.toy_kind import NAME, ToyKind

#: small operators only lose to thread hand-offs (see one_thread in tests/conftest.py);
#: every comparison here is between computations of this process
pytestmark = pytest.mark.usefixtures("one_thread")

BUILT_IN = [
    "plain",
    *(f"ks-{scope}" for scope in ("net", "stage")),
    *(f"acdc-{share}" for share in ("layer", "block", "net", "g-layer", "g-block", "g-net")),
]


def test_built_in_kinds_are_registered_once_each() -> None:
    names = list_conv_kinds()
    assert names[: len(BUILT_IN)] == BUILT_IN
    assert len(set(names)) == len(names)
    assert metaacdc.list_conv_kinds() == names


def test_vocabularies_derive_from_the_sharing_scopes() -> None:
    assert SCOPES == ("layer", "block", "net")
    assert ACDC_SHARES == ("layer", "block", "net", "g-layer", "g-block", "g-net")


@pytest.mark.parametrize("spec", BUILT_IN)
def test_each_spec_builds_the_kind_it_names(spec: str) -> None:
    group_size = 8 if "-g-" in spec else None  # a group size makes any ACDC share grouped
    kind = conv_kind(spec, atoms=4, group_size=group_size, regulators=True)
    expected = {"plain": PlainConv, "ks": KernelSharing, "acdc": ACDC}[spec.split("-")[0]]
    assert isinstance(kind, expected)
    assert kind.label == spec or kind.label == f"{spec}+reg"  # ks kinds mark regulators
    if isinstance(kind, ACDC):
        assert kind.atoms == 4


def test_kernel_sharing_stage_is_the_sharing_block() -> None:
    kind = conv_kind("ks-stage")
    assert isinstance(kind, KernelSharing) and kind.scope == "stage"
    model = create_backbone("conv6", kind, image_size=32)
    # conv6: blocks 1-4 pooled (one per stage), blocks 5-6 share a stage
    kernels = [m.weight for m in model.modules() if type(m).__name__ == "SharedKernelConv2d"]
    assert kernels[4] is kernels[5] and kernels[3] is not kernels[4]


def test_none_is_an_alias_of_plain_and_a_kind_passes_through() -> None:
    assert isinstance(conv_kind("none"), PlainConv)
    kind = PlainConv()
    assert conv_kind(kind) is kind


def test_unknown_specs_and_options_are_refused() -> None:
    with pytest.raises(
        ConfigError, match=f"conv='acdc-all' is not valid; accepted values: .*{NAME}"
    ):
        conv_kind("acdc-all")
    with pytest.raises(TypeError, match="unknown option"):
        conv_kind("plain", atom=3)


def test_registration_refuses_duplicates_aliases_and_unknown_options() -> None:
    with pytest.raises(ValueError, match="'acdc-net' is already registered"):
        register_conv_kind("acdc-net")(PlainConv)
    with pytest.raises(ValueError, match="'none' is already registered"):
        register_conv_kind("another-plain", aliases=("none",))(PlainConv)
    with pytest.raises(ValueError, match="unknown option"):
        register_conv_kind("with-width", options=("width",))
    assert "another-plain" not in list_conv_kinds()


def test_a_user_kind_works_from_python_with_its_declared_options() -> None:
    kind = conv_kind(NAME, atoms=3, regulators=True)  # regulators: not declared, not passed
    assert isinstance(kind, ToyKind) and kind.label == f"{NAME}-3"
    model = create_backbone("conv4", NAME, image_size=32)
    assert model.conv_label == f"{NAME}-8"  # the default atoms
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_a_user_kind_works_from_train_config_and_yaml(tmp_path: Path) -> None:
    config = resolve(TrainConfig(conv=NAME, atoms=5))
    assert isinstance(conv_kind_of(config), ToyKind) and conv_kind_of(config).label == f"{NAME}-5"
    file = tmp_path / "run.yaml"
    file.write_text(f"conv: {NAME}\natoms: 6\n")
    from_file = resolve(TrainConfig.from_dict(load_config_file(file), source=str(file)))
    assert conv_kind_of(from_file).label == f"{NAME}-6"


def test_a_user_kind_works_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--conv", NAME, "--atoms", "2", "--image-size", "32"]) == 0
    assert f"{NAME}-2" in capsys.readouterr().out
    assert main(["info", "--conv", NAME, "--acdc", "net"]) == 2
    assert "--conv cannot be combined" in capsys.readouterr().err


def test_plugins_named_by_entry_points_are_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = importlib.metadata.EntryPoint(
        name="toy", value="tests.convs.toy_kind", group="metaacdc.plugins"
    )
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: [plugin] if group == "metaacdc.plugins" else [],
    )
    load_plugins()  # the module is imported (already registered: importing it again is a no-op)
    assert NAME in list_conv_kinds()


def test_a_broken_plugin_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = importlib.metadata.EntryPoint(
        name="broken", value="no_such_module_anywhere", group="metaacdc.plugins"
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [plugin])
    with pytest.raises(
        ConfigError, match=r"plugin 'broken' \(no_such_module_anywhere\) failed to load"
    ):
        load_plugins()


def test_a_kind_object_needs_no_registration() -> None:
    class Unregistered(ConvKind):
        label = "unregistered"

        def build(self, spec: ConvSpec) -> nn.Module:
            return spec.dense()

    model = create_backbone("conv4", Unregistered(), image_size=32)
    assert model.conv_label == "unregistered"


def test_a_user_kind_trains_from_a_yaml_config_on_the_cli(tmp_path: Path) -> None:
    file = tmp_path / "toy.yaml"
    file.write_text(
        f"conv: {NAME}\natoms: 3\nimage_size: 32\nsynthetic_images_per_class: 20\n"
        "meta_updates: 2\nval_every: 2\nval_tasks: 2\nmeta_batch: 1\nworkers: 0\n"
        "inner_steps: 1\nqueries: 2\ntest_queries: 2\n"  # small tasks: only the kind matters
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(file), "--out", str(run), "--device", "cpu"]) == 0
    recorded = load_config_file(run / "config.yaml")
    assert recorded["conv"] == NAME and recorded["atoms"] == 3
    assert (run / "checkpoints" / "last.pt").is_file()


def test_the_cli_reports_a_broken_plugin_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = importlib.metadata.EntryPoint(
        name="broken", value="no_such_module_anywhere", group="metaacdc.plugins"
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [plugin])
    assert main(["info"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert error.startswith("metaacdc: error: plugin 'broken' (no_such_module_anywhere)")
