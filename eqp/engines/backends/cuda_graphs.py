"""Fixed-step Euler loops replayed as CUDA graphs: one launch per phase instead of two per step.

On a GPU a batch of 20 through 1000 Euler steps is bound by kernel launches, not arithmetic:
each step's product and clamp take microseconds to launch from the host and far less to run.
A phase has a fixed step count, so its loop is captured once per shape (and per constant such
as the nudging pull) and replayed; the replay runs the very kernels the eager loop runs, in the
same order, so its results are bit-identical to the eager loop's.

Tensors that change every phase (drive, state, target) are copied into the graph's own
buffers before each replay; tensors that live across phases (the step matrix) must keep their
storage, and are updated in place by the engine (a new storage is noticed and recaptured).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Loop = Callable[..., torch.Tensor]


def precise_float32() -> None:
    """Keep float32 products in full float32 on CUDA: TF32 would change the published numbers."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list, output: torch.Tensor) -> None:
        self.graph = graph
        self.inputs = inputs
        self.output = output


class GraphedLoops:
    """Captures ``loop(*inputs, *persistent, *constants)`` per key and replays it.

    ``inputs`` are copied into static buffers (None stays None); ``persistent`` are used as
    they are and must keep their storage between calls; ``constants`` are plain Python values
    baked into the capture. The loop must return a tensor it wrote (not an input alias that
    the caller reuses), which is cloned out of the graph's memory.
    """

    def __init__(self) -> None:
        self._captured: dict[tuple, _Captured] = {}

    def __len__(self) -> int:
        return len(self._captured)

    def run(
        self,
        loop: Loop,
        inputs: Sequence[torch.Tensor | None],
        persistent: Sequence[torch.Tensor],
        constants: Sequence[object],
    ) -> torch.Tensor:
        key = (
            loop,
            tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in inputs),
            tuple((t.data_ptr(), tuple(t.shape)) for t in persistent),
            tuple(constants),
        )
        captured = self._captured.get(key)
        if captured is None:
            captured = self._capture(loop, inputs, persistent, constants)
            self._captured[key] = captured
        for static, value in zip(captured.inputs, inputs, strict=True):
            if static is not None:
                static.copy_(value)
        captured.graph.replay()
        return captured.output.clone()

    @staticmethod
    def _capture(
        loop: Loop,
        inputs: Sequence[torch.Tensor | None],
        persistent: Sequence[torch.Tensor],
        constants: Sequence[object],
    ) -> _Captured:
        static = [None if t is None else t.clone() for t in inputs]
        # A warm-up on a side stream lets cuBLAS set up its handle and workspace outside the
        # capture, as torch.cuda.graphs asks.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            scratch = [None if t is None else t.clone() for t in inputs]
            loop(*scratch, *persistent, *constants)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = loop(*static, *persistent, *constants)
        return _Captured(graph, static, output)
