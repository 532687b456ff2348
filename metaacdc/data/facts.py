"""Data facts: what preprocessing a model trained on a split expects (its source, image
size, channels, normalisation and inversion). A checkpoint records them in plain types
(:meth:`DataFacts.to_dict`), so a run folder alone can rebuild its preprocessing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from numbers import Real
from typing import Any

from metaacdc.data.cache import CachedSplit
from metaacdc.errors import ConfigError

#: accepted values of :attr:`DataFacts.channels`: grayscale or RGB
CHANNELS = (1, 3)


@dataclass(frozen=True)
class DataFacts:
    """The preprocessing facts of a run's training data.

    Attributes:
        source: the data source (``"miniimagenet"``, ``"omniglot"``, ``"synthetic"``, ...).
        image_size: input side ``H == W`` in pixels.
        channels: ``C``, 1 (grayscale) or 3 (RGB).
        mean: per-channel pixel mean, pixels scaled to ``[0, 1]`` (``channels`` values).
        std: per-channel pixel standard deviation, same scale, each positive.
        inverted: whether the source pixels were inverted (Omniglot: white strokes on black).

    Raises:
        ConfigError: a value of the wrong type or out of range, naming it.
    """

    source: str
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    inverted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"data facts: source={self.source!r}; expected a name")
        for name, accepted, expected in (
            ("image_size", lambda v: v > 0, "an integer >= 1"),
            ("channels", lambda v: v in CHANNELS, "1 or 3"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not accepted(value):
                raise ConfigError(f"data facts: {name}={value!r}; expected {expected}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (
                isinstance(values, str | bytes)
                or not isinstance(values, Sequence)
                or len(values) != self.channels
                or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values)
            ):
                raise ConfigError(
                    f"data facts: {name}={values!r}; expected {self.channels} numbers "
                    f"(one per channel)"
                )
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if min(self.std) <= 0:
            raise ConfigError(f"data facts: std={list(self.std)}; expected positive numbers")
        if not isinstance(self.inverted, bool):
            raise ConfigError(f"data facts: inverted={self.inverted!r}; expected true or false")

    @classmethod
    def from_split(cls, split: CachedSplit) -> DataFacts:
        """The facts of a model trained on ``split``."""
        meta = split.meta
        return cls(
            source=meta.source,
            image_size=meta.image_size,
            channels=meta.channels,
            mean=tuple(meta.mean),
            std=tuple(meta.std),
            inverted=bool(meta.preprocessing.get("inverted", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (``torch.load(weights_only=True)``- and YAML-safe): lists for
        ``mean`` and ``std``; the format checkpoints have always stored."""
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: object) -> DataFacts:
        """Facts from :meth:`to_dict`'s mapping (as a checkpoint stores them).

        Raises:
            ConfigError: not a mapping, a missing or unknown key, or an invalid value.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"data facts are not a mapping (got {type(values).__name__})")
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in values]
        if missing:
            raise ConfigError(f"data facts lack {', '.join(missing)}")
        unknown = sorted(str(key) for key in values if key not in names)
        if unknown:
            raise ConfigError(f"data facts have unknown key(s) {', '.join(unknown)}")
        return cls(**{name: values[name] for name in names})
