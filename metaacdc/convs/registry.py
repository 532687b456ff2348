"""Name -> conv-kind registry: the one parser of conv specs (``plain``, ``acdc-net``, ...).

Python, :class:`~metaacdc.config.TrainConfig`, YAML configs and the CLI all turn a spec into
a :class:`~metaacdc.convs.base.ConvKind` here, so a kind registered by a user works in each
of them. Like the backbone registry (and torchvision's), a name is registered once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from metaacdc.convs.base import ConvKind
from metaacdc.errors import ConfigError

#: the settings a conv kind may take, with their defaults (the TrainConfig fields of the
#: same names); each kind declares which of them it reads
OPTION_DEFAULTS: dict[str, Any] = {
    "atoms": 8,
    "atom_drop": 0.1,
    "group_size": None,
    "include_1x1": False,
    "regulators": False,
}

Builder = TypeVar("Builder", bound=Callable[..., ConvKind])


@dataclass(frozen=True)
class ConvKindEntry:
    """A registered conv kind: how to build it and which settings it reads."""

    name: str
    builder: Callable[..., ConvKind]
    options: tuple[str, ...]


_REGISTRY: dict[str, ConvKindEntry] = {}
_ALIASES: dict[str, str] = {}


def register_conv_kind(
    name: str, *, options: Iterable[str] = (), aliases: Iterable[str] = ()
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(**options) -> ConvKind`` (a class or a function).

    Args:
        name: the spec string users write (``conv: NAME`` in a config, ``--conv NAME``).
        options: which of :data:`OPTION_DEFAULTS` the builder takes as keyword arguments.
        aliases: other spellings of the same kind.

    Raises:
        ValueError: the name or an alias is taken, or an option is not a known setting.
    """
    options = tuple(options)
    unknown = [option for option in options if option not in OPTION_DEFAULTS]
    if unknown:
        raise ValueError(
            f"conv kind {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(OPTION_DEFAULTS)}"
        )

    def decorate(builder: Builder) -> Builder:
        for spelling in (name, *aliases):
            if spelling in _REGISTRY or spelling in _ALIASES:
                raise ValueError(f"a conv kind named {spelling!r} is already registered")
        _REGISTRY[name] = ConvKindEntry(name, builder, options)
        _ALIASES.update(dict.fromkeys(aliases, name))
        return builder

    return decorate


def list_conv_kinds() -> list[str]:
    """Registered conv-kind names, in registration order (built-in kinds first)."""
    return list(_REGISTRY)


def conv_kind_entry(spec: str) -> ConvKindEntry:
    """The registry entry of ``spec`` (a name or an alias).

    Raises:
        ConfigError: no kind of that name, listing the accepted names.
    """
    entry = _REGISTRY.get(_ALIASES.get(spec, spec)) if isinstance(spec, str) else None
    if entry is None:
        raise ConfigError(
            f"conv={spec!r} is not valid; accepted values: {', '.join(list_conv_kinds())}"
        )
    return entry


def conv_kind(spec: str | ConvKind = "plain", **options: Any) -> ConvKind:
    """Build a conv kind from its spec (a ConvKind passes through unchanged).

    ``options`` are settings of :data:`OPTION_DEFAULTS` (``atoms``, ``atom_drop``,
    ``group_size``, ``include_1x1``, ``regulators``); each kind reads the ones it declared
    and ignores the rest, so one set of settings serves every kind.

    Raises:
        ConfigError: an unknown spec, or a setting the kind refuses.
        TypeError: an option name that no conv kind knows.
    """
    if isinstance(spec, ConvKind):
        return spec
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise TypeError(f"conv_kind() got unknown option(s): {', '.join(unknown)}")
    entry = conv_kind_entry(spec)
    settings = {**OPTION_DEFAULTS, **options}
    return entry.builder(**{option: settings[option] for option in entry.options})
