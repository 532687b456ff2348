"""The training configuration: one dataclass, protocol defaults per backbone (design §5),
building it from a YAML/TOML file and overrides (:func:`build_config`, what the command line
and Python users call alike), and resolution of the values left to the protocol."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib
import yaml

from metaacdc.acdc.tying import grouped_spec
from metaacdc.backbones.init import INITS as BACKBONE_INITS
from metaacdc.config.dataset import dataset_of
from metaacdc.config.schema import (
    ADAPT_SCOPES,
    CUDA_GRAPHS,
    DATASETS,
    ENGINES,
    INITS,
    check_settings,
)
from metaacdc.convs.base import ConvKind
from metaacdc.convs.registry import conv_kind
from metaacdc.errors import ConfigError

#: datasets whose images are smaller than the backbone's default side: trained at their own
#: (Omniglot's 28 px, CIFAR's 32 px); the others at the backbone's (84 Conv, 224 ResNet)
DATASET_IMAGE_SIZES: dict[str, int] = {"omniglot": 28, "cifar-fs": 32, "fc100": 32}
#: default adaptation steps at test per training inner step: twice as many, as the MAML
#: paper adapts (5 in training, 10 at test); more steps at test raised held-out accuracy by
#: 4 to 8 points (docs/results/learning-speed.md)
TEST_STEPS_PER_STEP = 2


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` means "the protocol default" (see :func:`resolve`):
    for ``dataset``, the source its ``data`` cache records (``synthetic`` without data).
    What each setting accepts is :data:`metaacdc.config.schema.RULES`."""

    backbone: str = "conv4"
    conv: str = "plain"
    atoms: int = 8
    atom_drop: float = 0.1
    group_size: int | None = None
    include_1x1: bool = False
    regulators: bool = False
    dataset: str | None = None
    data: str | None = None
    data_protocol: str | None = None
    ways: int = 5
    shots: int = 1
    queries: int = 16
    test_queries: int = 15
    image_size: int | None = None
    inner_lr: float = 0.01
    inner_steps: int = 5
    test_inner_steps: int | None = None
    first_order: bool | None = None
    adapt: str = "all"
    meta_sgd: bool = False
    init: str = "auto"
    meta_batch: int = 4
    meta_lr: float = 1e-3
    meta_updates: int | None = None
    val_every: int = 100
    val_tasks: int = 100
    augment: bool = True
    synthetic_images_per_class: int = 60
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    engine: str = "auto"
    cuda_graphs: str = "auto"
    workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (YAML- and ``torch.load(weights_only=True)``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping; unknown keys or wrong values are an error naming them and
        ``source``."""
        _refuse_unknown(values, source)
        return cls(**check_settings(values, source))


def _refuse_unknown(names: Iterable[str], source: str) -> None:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(known))}"
        )


def _settings(values: Mapping[Any, Any], source: str) -> dict[str, Any]:
    """``values`` keyed by :class:`TrainConfig` field names (dashes become underscores);
    a name given twice or unknown, or a value the setting does not accept, is refused,
    naming ``source``."""
    settings: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in settings:
            raise ConfigError(f"{source}: setting {name} is given twice")
        settings[name] = value
    _refuse_unknown(settings, source)
    return check_settings(settings, source)


def build_config(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str = "overrides",
) -> TrainConfig:
    """A run's settings: the protocol defaults, then ``config_file``, then ``overrides``
    (each wins over the one before). ``metaacdc train --config FILE --seed 3`` is
    ``build_config(FILE, {"seed": 3}, source="command line")``.

    Args:
        config_file: a ``.yaml``/``.yml`` or ``.toml`` file of settings, or ``None``.
        overrides: settings that win over the file's.
        source: what ``overrides`` are called in error messages (``"command line"``).

    Keys are :class:`TrainConfig` field names, with dashes or underscores. (An ungrouped
    ACDC conv given a ``group_size`` is named as the grouped kind it builds by
    :func:`resolve`: ``conv: acdc-net`` with ``group_size: 32`` becomes ``acdc-g-net``.)

    Returns:
        The config, not yet resolved: fields left ``None`` take the protocol default in
        :func:`resolve`, which also validates every value.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        ConfigError: a file that is not valid YAML/TOML or not a mapping, or a setting
            unknown, given twice or of a value it does not accept (a quoted ``"no"`` for a
            boolean, a NaN), naming the file or ``source`` and every wrong setting.
    """
    values = load_config_file(config_file) if config_file is not None else {}
    values.update(_settings(overrides or {}, source))
    return TrainConfig(**values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a ``.yaml``/``.yml`` or ``.toml`` file (keys as in :class:`TrainConfig`,
    dashes or underscores; an unknown one is refused). :func:`build_config` merges them with
    overrides into a config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            values = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        else:
            raise ConfigError(f"{path}: config files must end in .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(
            f"{path}: not valid {path.suffix[1:].upper()}: {_one_line(error)}"
        ) from error
    except _RepeatedKeyError as error:
        raise ConfigError(f"{path}: setting {error} is given twice") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return _settings(values, str(path))


class _RepeatedKeyError(Exception):
    """A YAML mapping names a key twice (PyYAML would keep the last one silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, refusing a mapping that names a key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise _RepeatedKeyError(str(key).replace("-", "_"))
        return super().construct_mapping(node, deep=deep)


def _one_line(error: Exception) -> str:
    """A parser's error in one line: what is wrong, and where (YAML's ``problem`` and
    ``problem_mark``; TOML's message holds both)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def protocol_meta_updates(shots: int) -> int:
    """CloserLook's length: 60,000 meta-updates for 1-shot, 40,000 otherwise."""
    return 60_000 if shots == 1 else 40_000


def resolve(config: TrainConfig, source: str = "config") -> TrainConfig:
    """Fill protocol defaults and validate every value; returns a new config.

    The dataset comes from the data (:func:`metaacdc.config.dataset.dataset_of`: a cache's
    recorded source) unless the config names it, and a name that contradicts the cache is
    refused.

    Raises:
        ConfigError: a wrong value, naming ``source`` and each wrong setting; a backbone,
            conv kind or data protocol that does not exist; a dataset the data
            contradicts.
        FileNotFoundError: ``data`` does not exist and the dataset is left to it.
    """
    from metaacdc.backbones import backbone_meta

    config = TrainConfig(**check_settings(config.to_dict(), source))
    backbone = backbone_meta(config.backbone)  # refuses an unknown backbone
    dataset = dataset_of(config.dataset, config.data, config.data_protocol)
    if config.data_protocol is not None and dataset != "omniglot":
        raise ConfigError(f"{source}: data_protocol applies to dataset omniglot only")
    resolved = dataclasses.replace(
        config,
        dataset=dataset,
        # an ungrouped ACDC scope given a group size builds its g- variant: name it so
        conv=grouped_spec(config.conv, config.group_size)
        if isinstance(config.conv, str)
        else config.conv,
        image_size=config.image_size or DATASET_IMAGE_SIZES.get(dataset, backbone.image_size),
        first_order=backbone.first_order if config.first_order is None else config.first_order,
        meta_updates=config.meta_updates or protocol_meta_updates(config.shots),
        test_inner_steps=config.test_inner_steps or TEST_STEPS_PER_STEP * config.inner_steps,
    )
    conv_kind_of(resolved)  # validates conv, atoms, group size
    return resolved


def chosen_init(init: str) -> str:
    """The scheme ``init`` names: ``auto`` is the default scheme (a new run's)."""
    return BACKBONE_INITS[0] if init == "auto" else init


def conv_kind_of(config: TrainConfig) -> ConvKind:
    """The :class:`~metaacdc.convs.ConvKind` a config describes."""
    return conv_kind(
        config.conv,
        atoms=config.atoms,
        atom_drop=config.atom_drop,
        group_size=config.group_size,
        include_1x1=config.include_1x1,
        regulators=config.regulators,
    )


__all__ = [
    "ADAPT_SCOPES",
    "CUDA_GRAPHS",
    "DATASETS",
    "DATASET_IMAGE_SIZES",
    "ENGINES",
    "INITS",
    "TEST_STEPS_PER_STEP",
    "TrainConfig",
    "build_config",
    "chosen_init",
    "conv_kind_of",
    "load_config_file",
    "protocol_meta_updates",
    "resolve",
]
