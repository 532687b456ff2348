"""A whole computation replayed as one CUDA graph: what ``--cuda-graphs`` does.

A MAML meta-update on a GPU is bound by launching kernels one after the other from Python
(hundreds per inner step), not by arithmetic. :class:`GraphedCall` captures a function of
some tensors once with ``torch.cuda.graph`` (the "whole-network capture" pattern of the
PyTorch CUDA-graph notes: warm-up calls on a side stream, then one capture) and afterwards
runs it by copying new inputs into its static input buffers and replaying the graph: one
launch for everything the function did, inner loop, second-order meta-gradient and
optimizer step included. Neither ``torch.cuda.make_graphed_callables`` (no double backward)
nor ``torch.compile`` (aot_autograd refuses double backward) is needed for that.

What a captured function must respect (the callers here do): the same shapes every call;
no host synchronisation and no new random generator inside (atom-drop masks are drawn
before, outside the graph, and passed in as inputs); tensors it reads besides its inputs
(the model's weights, the optimizer's state) updated in place, never replaced.

The warm-up calls run the function for real, so whatever state they change (``state``:
weights, optimizer moments) is copied aside first and put back before the capture: the
first replay starts from exactly the state an eager step would. :class:`Rehearsal` stands
in for the capture on the CPU, where graphs do not exist, so that this bookkeeping (static
buffers, warm-up, restored state) is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from metaacdc.errors import ConfigError

#: what a capture records: a call of the function on its static inputs
Recorded = Callable[[], Sequence[Tensor]]
#: warm-up calls before a capture (cuDNN's and autograd's lazy set-up happen there)
WARMUP_CALLS = 2


class Capture(Protocol):
    """How a :class:`GraphedCall` warms up and records its function."""

    def warm_up(self, calls: Callable[[], None]) -> None:
        """Run ``calls`` (the warm-up calls) where a capture can follow them."""

    def record(self, run: Recorded) -> tuple[Callable[[], None], list[Tensor]]:
        """Record ``run``; returns what replays it and the tensors its replays write."""


class CudaCapture:
    """``torch.cuda.graph`` capture, warm-up on a side stream (the documented pattern)."""

    def warm_up(self, calls: Callable[[], None]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            calls()
        torch.cuda.current_stream().wait_stream(side)

    def record(self, run: Recorded) -> tuple[Callable[[], None], list[Tensor]]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = list(run())
        return graph.replay, outputs


class Rehearsal:
    """The CPU's stand-in for a capture: "replaying" runs the function again and copies its
    results into the tensors the recording returned, as a graph's replay overwrites them.
    It exercises a :class:`GraphedCall`'s bookkeeping; it saves nothing."""

    def warm_up(self, calls: Callable[[], None]) -> None:
        calls()

    def record(self, run: Recorded) -> tuple[Callable[[], None], list[Tensor]]:
        outputs = [output.clone() for output in run()]

        def replay() -> None:
            fresh = run()
            with torch.no_grad():
                for kept, value in zip(outputs, fresh):
                    kept.copy_(value)

        return replay, outputs


class GraphedCall:
    """``fn`` captured once and replayed for every call.

    Args:
        fn: a function of the static input tensors (in the order of ``examples``) that
            returns tensors; see the module's notes for what it must respect.
        examples: inputs of the shapes and dtypes every call will have (copied, not kept).
        state: tensors ``fn`` changes in place (weights, optimizer state): copied aside
            before the warm-up calls and put back afterwards, so that capturing changes
            nothing.
        capture: :class:`CudaCapture` (default) or :class:`Rehearsal`.
        warmup: warm-up calls before the capture.

    Calling it copies the new inputs into the static buffers, replays, and returns the
    static output tensors: the next call overwrites them (clone what you keep).
    """

    def __init__(
        self,
        fn: Callable[[Sequence[Tensor]], Sequence[Tensor]],
        examples: Sequence[Tensor],
        *,
        state: Sequence[Tensor] = (),
        capture: Capture | None = None,
        warmup: int = WARMUP_CALLS,
    ) -> None:
        capture = CudaCapture() if capture is None else capture
        self.inputs = [example.detach().clone() for example in examples]
        saved = [tensor.detach().clone() for tensor in state]

        def restore() -> None:
            with torch.no_grad():
                for tensor, copy in zip(state, saved):
                    tensor.copy_(copy)

        def warm_up() -> None:
            for _ in range(warmup):
                fn(self.inputs)

        try:
            capture.warm_up(warm_up)
            restore()
            self._replay, self.outputs = capture.record(lambda: fn(self.inputs))
        finally:  # a capture executes nothing; a rehearsal, or a failed capture, may have
            restore()

    def __call__(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Replay on ``inputs`` (shaped like the examples); returns the static outputs.

        Raises:
            ValueError: inputs of other number, shapes or dtypes than the examples.
        """
        if len(inputs) != len(self.inputs) or any(
            new.shape != old.shape or new.dtype != old.dtype
            for new, old in zip(inputs, self.inputs)
        ):
            raise ValueError("a captured call's inputs must keep the captured shapes and dtypes")
        with torch.no_grad():
            for static, new in zip(self.inputs, inputs):
                static.copy_(new, non_blocking=True)
        self._replay()
        return self.outputs


def wants_graphs(requested: str, device: torch.device, *, engine: str) -> bool:
    """Whether a run asking for ``requested`` (``auto``, ``on``, ``off``) captures on
    ``device`` with ``engine``: ``auto`` does where it can (the batched engine on CUDA).

    Raises:
        ConfigError: ``on`` where capture cannot be: off CUDA, or the learn2learn engine
            (a Python loop over tasks, one graph per task would gain little).
    """
    if requested == "off":
        return False
    supported = device.type == "cuda" and engine == "batched"
    if requested == "on" and not supported:
        where = f"on {device.type}" if device.type != "cuda" else f"with the {engine} engine"
        raise ConfigError(
            f"--cuda-graphs on captures the batched engine's steps on a CUDA device, not "
            f"{where}; use --cuda-graphs auto or off"
            + ("" if device.type != "cuda" else " (or --engine batched)")
        )
    return supported
