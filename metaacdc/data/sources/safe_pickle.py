"""Load dataset pickles without running code from them.

``pickle.load`` calls whatever callable a file names, so a dataset pickle from the internet
could run any command. The dataset files metaacdc reads (miniImageNet caches, the CIFAR-100
"python" archive, the tieredImageNet caches) hold only containers, numbers, strings, bytes
and numpy arrays. :func:`load` resolves exactly the globals those need and refuses any other
with a :class:`~metaacdc.errors.ConfigError` naming the file and the global, before anything
is called. Python 2 pickles (the CIFAR-100 archive, the tieredImageNet caches) are read with
``encoding="latin1"``, as numpy recommends for arrays pickled by Python 2.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from metaacdc.errors import ConfigError


def _numpy_module(name: str) -> Any:
    """``numpy._core.<name>`` (numpy >= 2) or ``numpy.core.<name>`` (numpy 1.x)."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # pragma: no cover - numpy 1.x without the numpy._core alias
        return importlib.import_module(f"numpy.core.{name}")


_multiarray = _numpy_module("multiarray")
_numeric = _numpy_module("numeric")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array reconstructor, for plain ndarrays only (no subclass constructors)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not numpy.ndarray")
    return _multiarray._reconstruct(subtype, shape, dtype)


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """How Python 3 pickles ``bytes`` at protocols 0-2; only the latin-1 codec is accepted."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """``(module, name) -> object`` for every global a dataset pickle may name."""
    allowed: dict[tuple[str, str], Any] = {}
    for module in ("builtins", "__builtin__"):  # Python 2 pickles say __builtin__
        for value in (dict, list, tuple, set, frozenset, bytes, bytearray, complex):
            allowed[module, value.__name__] = value
    allowed["collections", "OrderedDict"] = OrderedDict
    allowed["_codecs", "encode"] = _codecs_encode
    allowed["numpy", "ndarray"] = np.ndarray
    allowed["numpy", "dtype"] = np.dtype
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spell these differently
        allowed[f"{core}.multiarray", "_reconstruct"] = _reconstruct
        allowed[f"{core}.multiarray", "scalar"] = _multiarray.scalar
        allowed[f"{core}.numeric", "_frombuffer"] = _numeric._frombuffer
    return allowed


ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`.

    Args:
        stream: the binary stream to read.
        name: what the stream is called in errors (a path, or ``archive:member``).
    """

    def __init__(self, stream: IO[bytes], name: str) -> None:
        super().__init__(stream, encoding="latin1")
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; ConfigError for anything else."""
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise ConfigError(
                f"{self.name}: refused to load: the pickle asks for {module}.{name}, but dataset "
                "files hold only containers, numbers, strings, bytes and numpy arrays; "
                "the file is damaged or hostile, get it again from its source"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Dataset pickles have no persistent ids; refuse one."""
        raise ConfigError(f"{self.name}: refused to load: the pickle uses a persistent id")


def load_stream(stream: IO[bytes], name: str) -> Any:
    """Unpickle ``stream`` with :class:`RestrictedUnpickler`.

    Raises:
        ConfigError: naming ``name``, for a refused global or a file that is not a pickle.
    """
    try:
        return RestrictedUnpickler(stream, name).load()
    except ConfigError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ConfigError(f"{name}: not a readable pickle ({error})") from error
    except (IndexError, KeyError, MemoryError, OverflowError, UnicodeError) as error:
        raise ConfigError(f"{name}: not a readable pickle ({type(error).__name__})") from error


def load(path: Path | str) -> Any:
    """Unpickle the file at ``path`` safely (see :func:`load_stream`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pickle file not found")
    with open(path, "rb") as handle:
        return load_stream(handle, str(path))


def loads(data: bytes, name: str) -> Any:
    """Unpickle ``data`` safely; ``name`` says where it came from in errors."""
    return load_stream(io.BytesIO(data), name)


def str_keys(value: Any, name: str, what: str = "a dict") -> dict[str, Any]:
    """``value`` as a dict with ``str`` keys (Python 2 pickles read as bytes give ``bytes``).

    Raises:
        ConfigError: naming ``name`` when ``value`` is not a mapping.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected {what}, found {type(value).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in value.items()}


def require_keys(content: Mapping[str, Any], keys: tuple[str, ...], name: str, what: str) -> None:
    """Raise ConfigError naming ``name`` unless every key is in ``content``."""
    missing = [key for key in keys if key not in content]
    if missing:
        raise ConfigError(
            f"{name}: not {what}: missing {', '.join(missing)} "
            f"(found {', '.join(sorted(map(str, content))) or 'nothing'})"
        )
