"""Checkpoints: written atomically, readable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain types and tensors only (no pickled code): the resolved
config, the data's preprocessing facts, the step, model and optimizer state and the best
validation accuracy so far. Its tensors are stored on the CPU, so that a checkpoint written
during GPU training also opens with a plain ``torch.load`` on a machine without a GPU.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metaacdc.errors import ConfigError

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

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not a metaacdc checkpoint, or of an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for foreign or damaged files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not a readable metaacdc checkpoint ({reason})") from error
    missing = [key for key in REQUIRED if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ConfigError(f"{path}: not a metaacdc checkpoint (missing {', '.join(missing)})")
    if payload["format"] != FORMAT:
        raise ConfigError(
            f"{path}: checkpoint format {payload['format']} is not supported "
            f"(this metaacdc reads format {FORMAT})"
        )
    return payload
