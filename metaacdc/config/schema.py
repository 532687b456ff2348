"""What each training setting accepts: its type (booleans only from booleans, whole numbers
only from whole numbers, numbers finite) and its range or choices. Every setting is checked
against this table wherever it enters (a config file, the command line, a checkpoint, a
Python ``TrainConfig``), and every wrong one is named, with where it came from, before
anything is written or trained."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metaacdc.backbones.init import INITS as BACKBONE_INITS
from metaacdc.data.sources.omniglot_protocols import PROTOCOLS
from metaacdc.errors import ConfigError

DATASETS: tuple[str, ...] = (
    "synthetic",
    "miniimagenet",
    "omniglot",
    "cifar-fs",
    "fc100",
    "cub",
    "tieredimagenet",
)
#: MAML engines (:mod:`metaacdc.maml.engine`): ``auto`` picks the faster one on the device
ENGINES: tuple[str, ...] = ("auto", "learn2learn", "batched")
ADAPT_SCOPES: tuple[str, ...] = ("all", "head")
#: whole-step CUDA-graph capture (:mod:`metaacdc.runtime.cuda_graphs`): ``auto`` captures
#: where it is supported (the batched engine on CUDA, one process), ``on`` insists
CUDA_GRAPHS: tuple[str, ...] = ("auto", "on", "off")
#: initialisation schemes (:mod:`metaacdc.backbones.init`); ``auto`` is the first of
#: them for a new run, and a resumed run's own
INITS: tuple[str, ...] = ("auto", *BACKBONE_INITS)


@dataclass(frozen=True)
class Rule:
    """What one setting accepts.

    Attributes:
        kind: ``bool``, ``int``, ``float`` (an int is accepted, and in a file also a string
            such as ``1e-3``, which YAML reads as text) or ``str``; ``None``: anything (a
            value the setting's own registry checks, such as a conv kind object).
        optional: ``None`` is accepted (the protocol default, filled in by ``resolve``).
        minimum: the smallest accepted number (inclusive).
        positive: numbers must be above zero.
        below: numbers must be below this (exclusive).
        choices: the accepted strings.
    """

    kind: type | None
    optional: bool = False
    minimum: float | None = None
    positive: bool = False
    below: float | None = None
    choices: tuple[str, ...] | None = None

    def expected(self) -> str:
        """What the setting accepts, in words."""
        if self.choices is not None:
            words = f"one of {', '.join(self.choices)}"
        elif self.kind is bool:
            words = "true or false"
        elif self.kind is int:
            words = "a whole number"
            if self.minimum is not None:
                words += f" >= {self.minimum:g}"
        elif self.kind is float:
            words = "a finite number"
            if self.positive:
                words += " > 0"
            if self.minimum is not None:
                words += f" >= {self.minimum:g}"
            if self.below is not None:
                words += f" and < {self.below:g}"
        else:
            words = "text"
        return f"{words}, or null" if self.optional else words

    def accept(self, value: Any) -> Any:
        """``value`` as the setting holds it (a float read from text, for instance).

        Raises:
            ValueError: it is not a value this setting accepts.
        """
        if value is None and self.optional:
            return None
        if self.kind is None:
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError
            if self.choices is not None and value not in self.choices:
                raise ValueError
            return value
        number = self._number(value)
        if self.positive and not number > 0:
            raise ValueError
        if self.minimum is not None and not number >= self.minimum:
            raise ValueError
        if self.below is not None and not number < self.below:
            raise ValueError
        return number

    def _number(self, value: Any) -> int | float:
        if isinstance(value, bool):
            raise ValueError
        if self.kind is int:
            if not isinstance(value, int):
                raise ValueError
            return value
        if isinstance(value, str):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError
        return value


def _whole(minimum: int, optional: bool = False) -> Rule:
    return Rule(int, optional=optional, minimum=minimum)


FLAG = Rule(bool)

#: every setting of :class:`~metaacdc.config.TrainConfig` and what it accepts
RULES: dict[str, Rule] = {
    "backbone": Rule(str),  # the backbone registry names what exists (plugins add some)
    "conv": Rule(None),  # a conv kind name or object, checked by the conv registry
    "atoms": _whole(1),
    "atom_drop": Rule(float, minimum=0.0, below=1.0),
    "group_size": _whole(1, optional=True),
    "include_1x1": FLAG,
    "regulators": FLAG,
    "dataset": Rule(str, optional=True, choices=DATASETS),
    "data": Rule(str, optional=True),
    "data_protocol": Rule(str, optional=True, choices=PROTOCOLS),
    "ways": _whole(2),  # a 1-way task has nothing to tell apart
    "shots": _whole(1),
    "queries": _whole(1),
    "test_queries": _whole(1),
    "image_size": _whole(1, optional=True),
    "inner_lr": Rule(float, positive=True),
    "inner_steps": _whole(1),
    "test_inner_steps": _whole(1, optional=True),
    "first_order": Rule(bool, optional=True),
    "adapt": Rule(str, choices=ADAPT_SCOPES),
    "meta_sgd": FLAG,
    "init": Rule(str, choices=INITS),
    "meta_batch": _whole(1),
    "meta_lr": Rule(float, positive=True),
    "meta_updates": _whole(1, optional=True),
    "val_every": _whole(1),
    "val_tasks": _whole(1),
    "augment": FLAG,
    "synthetic_images_per_class": _whole(1),
    "seed": _whole(0),
    "device": Rule(str),
    "amp": FLAG,
    "engine": Rule(str, choices=ENGINES),
    "cuda_graphs": Rule(str, choices=CUDA_GRAPHS),
    "workers": _whole(0),
}


def check_settings(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``values`` as the settings hold them, every one checked against :data:`RULES`.

    Raises:
        ConfigError: one line naming ``source`` and each wrong setting with what it
            accepts.
    """
    accepted: dict[str, Any] = {}
    wrong: list[str] = []
    for name, value in values.items():
        rule = RULES[name]
        try:
            accepted[name] = rule.accept(value)
        except ValueError:
            wrong.append(f"{name}={value!r} is not valid (expected {rule.expected()})")
    if wrong:
        raise ConfigError(f"{source}: {'; '.join(wrong)}")
    return accepted
