"""Checkpoints: written atomically, readable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain types and tensors only (no pickled code): the resolved
config, the data's preprocessing facts, the step, model and optimizer state and the best
validation accuracy so far. Its tensors are stored on the CPU, so that a checkpoint written
during GPU training also opens with a plain ``torch.load`` on a machine without a GPU.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from metaacdc.errors import ConfigError, NonFiniteError
from metaacdc.runtime.finite import first_non_finite

FORMAT = 1
REQUIRED = ("format", "config", "data", "step", "model")


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor inside its dicts, lists and tuples moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(item) for item in value)
    return value


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (its tensors moved to the CPU) to ``path`` through a temporary file
    and an atomic rename, so an interruption never leaves a truncated checkpoint behind."""
    payload = _on_cpu(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": FORMAT, **payload}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Its model and optimizer tensors and its data statistics are checked to be finite, so a
    damaged or diverged checkpoint is refused here rather than evaluated to plausible
    numbers (one pass over the tensors).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not a metaacdc checkpoint (not a PyTorch file, damaged, or holding
            pickled code, which is never loaded), or of an unknown format version.
        NonFiniteError: a weight, optimizer state or data statistic holds NaN or infinity;
            the message names the file and the first such value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for foreign or damaged files
        reason = _unreadable(path, error)
        raise ConfigError(f"{path}: not a readable metaacdc checkpoint ({reason})") from error
    missing = [key for key in REQUIRED if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ConfigError(f"{path}: not a metaacdc checkpoint (missing {', '.join(missing)})")
    if payload["format"] != FORMAT:
        raise ConfigError(
            f"{path}: checkpoint format {payload['format']} is not supported "
            f"(this metaacdc reads format {FORMAT})"
        )
    for key in ("model", "optimizer", "data"):
        bad = first_non_finite(payload.get(key), key)
        if bad is not None:
            raise NonFiniteError(
                f"{path}: {bad} holds NaN or infinity; the file is damaged or its run "
                "diverged, and is refused"
            )
    return payload


#: the class or function a refused pickle names (PyTorch's "Unsupported global" message)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _unreadable(path: Path, error: Exception) -> str:
    """Why ``path`` is not a checkpoint, in a few words. PyTorch's own message is not
    repeated: it advises loading with ``weights_only=False``, which would run whatever code
    a foreign file holds."""
    if isinstance(error, OSError):
        return f"cannot be read: {error.strerror or error}"
    try:
        with path.open("rb") as stream:
            head = stream.read(4)
    except OSError as unread:
        return f"cannot be read: {unread.strerror or unread}"
    if not head:
        return "the file is empty"
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        named = _GLOBAL.search(str(error))
        what = f" ({named.group(1)})" if named else ""
        return (
            f"it holds pickled code{what}, which a metaacdc checkpoint never holds; "
            "it is not loaded, as loading could run that code"
        )
    if head.startswith(b"PK"):
        return "a zip archive but not a PyTorch file, or a damaged (truncated) one"
    if head.startswith(b"\x80"):
        return "a pickle that is not a PyTorch checkpoint, or a damaged one"
    return "not a PyTorch file"
