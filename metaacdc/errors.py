"""Exceptions for mistakes a user can fix, so the CLI can report them in one line."""


class ConfigError(ValueError):
    """An argument or configuration value is invalid; the message names it and what is accepted."""


def check_choice(name: str, value: object, accepted: "list[str] | tuple[str, ...]") -> None:
    """Raise ConfigError unless ``value`` is one of ``accepted``."""
    if value not in accepted:
        raise ConfigError(f"{name}={value!r} is not valid; accepted values: {', '.join(accepted)}")


def check_positive_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise ConfigError unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is not valid; expected an integer >= {minimum}")


def check_probability(name: str, value: object) -> None:
    """Raise ConfigError unless ``value`` is a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}={value!r} is not valid; expected a number in [0, 1)")


class NonFiniteError(ConfigError):
    """Values that must be finite (images, weights, logits, the loss) hold NaN or infinity;
    the message names which values and where."""
