"""Which device a run or a loaded model uses."""

from __future__ import annotations

import torch

from metaacdc.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU; otherwise ``torch.device(device)``.

    Raises:
        ConfigError: an unknown device name, CUDA asked for but not available, or a GPU
            number this machine does not have.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            f"device={device!r} is not valid; accepted: auto, cpu, cuda, cuda:N"
        ) from error
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} asked for, but CUDA is not available here")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ConfigError(
            f"device={device!r} is not available: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return resolved


def describe_device(device: torch.device) -> str:
    """``device`` with what decides its rounding: on the CPU the kernels' instruction set
    and the intra-op threads, on CUDA the GPU's name; and the torch version. Runs are
    bit-reproducible only where these match (docs/reliability.md), so each run's log names
    them."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        hardware = (
            f"{torch.backends.cpu.get_cpu_capability()} kernels, "
            f"{threads} thread{'s' if threads > 1 else ''}"
        )
    return f"{device} ({hardware}, torch {torch.__version__})"
