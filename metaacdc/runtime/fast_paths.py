"""One switch for the speed paths chosen from CPU timings, each of which gives the numbers of
the plain path, exactly or up to float rounding.

:func:`cpu_fast_paths` turns them all on or off for a ``with`` block;
:func:`cpu_fast_paths_enabled` is what each of them reads. They are on unless a block turns
them off. The setting lives in a :class:`contextvars.ContextVar`: blocks nest, each restores
the setting it found (also when left by an exception), and no global state changes: another
thread does not see this thread's blocks (a new thread starts with the fast paths on), an
``asyncio`` task sees the setting of the context it was created in, and a process of its own
(the evaluation pool's workers, below) has to be handed it. Each path keeps its own
conditions (CPU only, no autograd, ...) on top of the switch, and reads the switch when it
acts (a task copy's layouts: when the copy is made).

The paths it governs:

1. **Pool-first batch norm** (:mod:`metaacdc.backbones.pool_first`): a Conv block whose
   batch norm is followed by max-pooling pools the convolution output first and applies the
   batch norm's per-channel map to the pooled quarter (CPU, no autograd, weights ``>= 0``).
   Max-pooling commutes with an increasing per-channel map, and the statistics are those of
   the whole output, so only the rounding of the map differs (tolerance ``1e-5``).
2. **Fused batch-norm double backward** (:mod:`metaacdc.maml.batch_norm`): the inner loop of
   a second-order task differentiates batch norm twice through a hand-derived formula (CPU).
   Forward and first backward stay PyTorch's kernels, bit for bit; the second-order terms
   are the same linear combinations summed in another order (float64: ``1e-10``).
3. **Channels-last layouts** (:func:`metaacdc.maml.learner.task_layouts`): a task's passes
   run in the channels-last layout (a second-order inner loop excepted), its adapted model
   is fed images in it, and the gradients a channels-last query pass hands back to a
   second-order inner loop are made contiguous by a hook. Layouts change the order of the
   sums inside convolution and batch norm, hence rounding only. This is the one path that
   also acts on a GPU (cuDNN serves channels-last too); turned off, every device runs the
   default layout. A task copy takes its layouts when it is made
   (:meth:`metaacdc.maml.learner.MetaLearner.task_learner`) and keeps them.
4. **Reusing freed memory** (:func:`metaacdc.runtime.memory.reuse_freed_memory`): an
   allocator setting (glibc on Linux) around the evaluator's task loop. It changes where
   memory comes from, never a number (bit for bit).

Not governed: **the evaluation worker pool** (``evaluate(..., processes=N)``,
:mod:`metaacdc.evaluation.pool`). How many processes share the CPU is a choice the caller
makes explicitly, not a substitution made behind its back, and it changes no number beyond
the rounding of the thread count each worker runs (``cores // N``; one process on that many
threads gives the same accuracies). The workers are separate processes, so a ContextVar
would not reach them: the pool hands them the setting in force when it is built, and with
the fast paths off each worker evaluates its tasks on the plain path.

Use the switch off to count or time the plain path (:func:`metaacdc.reports.estimate.task_ops`
counts a GPU's operators with it; ``scripts/bench_maml.py`` times the project with and
without it) and to test each path against the plain one (``tests/runtime/test_fast_paths.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ENABLED: ContextVar[bool] = ContextVar("metaacdc_cpu_fast_paths", default=True)


@contextmanager
def cpu_fast_paths(enabled: bool) -> Iterator[None]:
    """Turn the fast paths of this module's list on (``True``) or off (``False``) within
    the block; the setting found on entering is back on leaving it, however it is left.

    Example::

        with cpu_fast_paths(False):
            logits = learner.predict(support_x, support_y, query_x)  # the plain path
    """
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def cpu_fast_paths_enabled() -> bool:
    """Whether the fast paths may run here (True unless a :func:`cpu_fast_paths` block
    turned them off)."""
    return _ENABLED.get()


__all__ = ["cpu_fast_paths", "cpu_fast_paths_enabled"]
