"""A scoped allocator setting that makes CPU evaluation faster without changing any result.

MAML evaluation on CPU allocates and frees the same large activation tensors (tens to
hundreds of MB) several times per task. glibc serves allocations above its mmap threshold
(32 MB at most by default) with fresh ``mmap`` pages and unmaps them on free, so the kernel
page-faults and zeroes every such tensor again: measured on Conv4 at 84 px, about half the
time of a task. Inside :func:`reuse_freed_memory` freed blocks stay in the heap and are
reused instead (the effect the jemalloc/tcmalloc advice of PyTorch's CPU performance guide
gets by other means).

The price is resident memory: freed blocks stay mapped, and heap fragmentation raised the
peak of a second-order training step by about a third. Hence a scope, used around the
evaluator's task loop only, after which the heap is trimmed and glibc's usual thresholds
are back. It is one of the CPU fast paths: with them off
(:func:`~metaacdc.runtime.fast_paths.cpu_fast_paths`) the scope leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from metaacdc.runtime.fast_paths import cpu_fast_paths_enabled

# mallopt(3) parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: inside the scope, allocations up to this size come from (and return to) the heap
HEAP_SERVED_BYTES = 1 << 30
# where glibc's dynamic thresholds settle once large blocks have been freed (malloc.c:
# DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, trim threshold twice that)
_GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


def _glibc() -> ctypes.CDLL | None:
    return _load_glibc() if sys.platform.startswith("linux") else None


@functools.cache  # loaded once: every evaluation (and validation) enters the scope
def _load_glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _set_thresholds(libc: ctypes.CDLL, mmap_bytes: int, trim_bytes: int) -> bool:
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes)
    )


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, keep freed blocks up to 1 GiB in the process heap for reuse.

    Yields:
        Whether the setting applies here (glibc on Linux, the fast paths on when the block
        is entered); otherwise the block runs unchanged. Speed and resident memory are all
        it changes, never a number.
    """
    libc = _glibc() if cpu_fast_paths_enabled() else None
    applied = libc is not None and _set_thresholds(libc, HEAP_SERVED_BYTES, HEAP_SERVED_BYTES)
    try:
        yield applied
    finally:
        if libc is not None and applied:
            _set_thresholds(libc, _GLIBC_MMAP_THRESHOLD_MAX, 2 * _GLIBC_MMAP_THRESHOLD_MAX)
            libc.malloc_trim(0)
