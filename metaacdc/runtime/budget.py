"""How many tasks fit in memory at once: the free memory of a device, and the number of
equally sized pieces of work it holds (the batched engine's tasks per call)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

#: share of the free memory a batch of tasks may take (the rest: the model, its
#: gradients, the allocator's slack, other work on the machine)
MEMORY_SHARE = 0.4
#: at most this many tasks per call: beyond it a GPU gains nothing more from batching
MOST_TASKS = 256


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: CUDA's free memory, or the host's
    available memory (``MemAvailable`` of /proc/meminfo, else free pages)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def pieces_that_fit(piece_bytes: int, device: torch.device, most: int = MOST_TASKS) -> int:
    """How many pieces of ``piece_bytes`` each fit in :data:`MEMORY_SHARE` of the free
    memory of ``device``: at least 1, at most ``most``."""
    budget = MEMORY_SHARE * free_bytes(device)
    return max(1, min(most, int(budget // max(piece_bytes, 1))))
