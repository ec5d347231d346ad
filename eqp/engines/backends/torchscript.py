"""Euler loops compiled with TorchScript, so small networks do not pay Python per step.

For the paper's small networks (Wine, Diabetes: under 100 neurons) a step is a few
microseconds of arithmetic, and the interpreter's per-call cost would dominate. The same
ATen kernels run either way, so results are bit-identical to the eager loops below, which
remain the fallback wherever TorchScript is unavailable.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Optional

import torch


def dense_loop(
    drive: torch.Tensor,
    s: torch.Tensor,
    matrix: torch.Tensor,
    buffer: torch.Tensor,
    steps: int,
    target: Optional[torch.Tensor],  # noqa: UP045 - TorchScript does not parse "X | None"
    pull: float,
    first_output: int,
) -> torch.Tensor:
    """Euler steps with rows as examples: s <- clamp(drive + s @ matrix).

    With a ``target`` (the weakly clamped phase) the outputs are pulled towards it after
    each energy step and before the clamp, as published.
    """
    for _ in range(steps):
        torch.addmm(drive, s, matrix, out=buffer)
        if target is not None:
            out = buffer[:, first_output:]
            out.copy_(out + pull * (target - out))
        torch.clamp(buffer, 0.0, 1.0, out=s)
    return s


def blocked_step(
    drive: torch.Tensor,
    s: torch.Tensor,
    buffer: torch.Tensor,
    keep: float,
    runs: list[list[int]],
    values: list[torch.Tensor],
    sparse: Optional[torch.Tensor],  # noqa: UP045 - TorchScript does not parse "X | None"
) -> None:
    """buffer = drive + keep s + eps W_hh s for transposed states (neurons x batch).

    ``runs`` holds (first destination row, first source row, block count, destination size,
    source size); a run of several equal blocks is one batched GEMM.
    """
    batch = s.shape[1]
    torch.add(drive, s, alpha=keep, out=buffer)
    for i in range(len(runs)):
        dst, src, count, n_dst, n_src = runs[i][0], runs[i][1], runs[i][2], runs[i][3], runs[i][4]
        if count == 1:
            buffer[dst : dst + n_dst].addmm_(values[i][0], s[src : src + n_src])
        else:
            target = buffer[dst : dst + count * n_dst].view([count, n_dst, batch])
            source = s[src : src + count * n_src].view([count, n_src, batch])
            target.baddbmm_(values[i], source)
    if sparse is not None:
        buffer.addmm_(sparse, s)


def blocked_loop(
    drive: torch.Tensor,
    s: torch.Tensor,
    buffer: torch.Tensor,
    keep: float,
    runs: list[list[int]],
    values: list[torch.Tensor],
    sparse: Optional[torch.Tensor],  # noqa: UP045
    steps: int,
    target: Optional[torch.Tensor],  # noqa: UP045
    pull: float,
    first_output: int,
) -> torch.Tensor:
    """``dense_loop`` for transposed states and the blocked weight layout."""
    for _ in range(steps):
        blocked_step(drive, s, buffer, keep, runs, values, sparse)
        if target is not None:
            out = buffer[first_output:]
            out.copy_(out + pull * (target - out))
        torch.clamp(buffer, 0.0, 1.0, out=s)
    return s


def graph_dense_loop(
    drive: torch.Tensor,
    s: torch.Tensor,
    target: torch.Tensor | None,
    matrix: torch.Tensor,
    steps: int,
    pull: float,
    first_output: int,
) -> torch.Tensor:
    """``dense_loop`` in the argument order of
    :class:`eqp.engines.backends.cuda_graphs.GraphedLoops` (per-phase tensors, then the step
    matrix, then constants), with its own scratch buffer."""
    return dense_loop(drive, s, matrix, torch.empty_like(s), steps, target, pull, first_output)


def stacked_loop(
    drive: torch.Tensor,
    s: torch.Tensor,
    target: torch.Tensor | None,
    pull: torch.Tensor | None,
    matrix: torch.Tensor,
    steps: int,
    first_output: int,
) -> torch.Tensor:
    """``dense_loop`` for an ensemble: leading member axis, one batched product per step.

    ``drive`` and ``s`` are members x rows x hidden, ``matrix`` members x hidden x hidden and
    ``pull`` (members x 1 x 1) each member's nudging strength, a tensor so that one captured
    graph serves every sign of beta.
    """
    buffer = torch.empty_like(s)
    for _ in range(steps):
        torch.baddbmm(drive, s, matrix, out=buffer)
        if target is not None and pull is not None:
            out = buffer[:, :, first_output:]
            out.copy_(out + pull * (target - out))
        torch.clamp(buffer, 0.0, 1.0, out=s)
    return s


_LOOPS = {"dense_loop": dense_loop, "blocked_loop": blocked_loop}
_compiled: dict[str, Callable] = {}


def compiled(name: str) -> Callable:
    """The TorchScript version of one of the loops above (eager if scripting fails)."""
    if name not in _compiled:
        function = _LOOPS[name]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _compiled[name] = torch.jit.script(function)
        except Exception:  # noqa: BLE001 - any scripting failure falls back to the same loop
            _compiled[name] = function
    return _compiled[name]
