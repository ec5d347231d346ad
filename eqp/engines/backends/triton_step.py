"""One Euler step as one Triton kernel: product, drive, nudge and clamp fused (CUDA only).

cuBLAS picks few thread blocks for a 20-row product (a 1510-wide layer gives about a dozen
tiles), so a step of the paper's batch leaves most of a GPU idle; this kernel tiles the output
in 32-column blocks over every member of an ensemble and does the rest of the step in the
same pass. Its products are full float32 (``input_precision="ieee"``: no TF32), summed in
another order than cuBLAS, so its results equal the cuBLAS path's to float rounding, not bit
for bit: it is the separate step kernel ``triton``, measured against ``cublas``.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

STEP_KERNELS = ("cublas", "triton")


def unavailable_reason() -> str | None:
    """Why the Triton step cannot run here, or None."""
    if triton is None:
        return "triton is not installed"
    return None


if triton is not None:

    @triton.jit
    def _euler_step(
        s_ptr,
        w_ptr,
        drive_ptr,
        out_ptr,
        target_ptr,
        pull_ptr,
        rows_total,
        hidden,
        outputs,
        first_output,
        HAS_TARGET: tl.constexpr,
        BR: tl.constexpr,
        BC: tl.constexpr,
        BK: tl.constexpr,
    ):
        member = tl.program_id(0)
        rows = tl.program_id(1) * BR + tl.arange(0, BR)
        cols = tl.program_id(2) * BC + tl.arange(0, BC)
        s_base = s_ptr + member * rows_total * hidden
        w_base = w_ptr + member * hidden * hidden
        acc = tl.zeros((BR, BC), dtype=tl.float32)
        for k0 in range(0, hidden, BK):
            ks = k0 + tl.arange(0, BK)
            a = tl.load(
                s_base + rows[:, None] * hidden + ks[None, :],
                mask=(rows[:, None] < rows_total) & (ks[None, :] < hidden),
                other=0.0,
            )
            b = tl.load(
                w_base + ks[:, None] * hidden + cols[None, :],
                mask=(ks[:, None] < hidden) & (cols[None, :] < hidden),
                other=0.0,
            )
            acc = tl.dot(a, b, acc, input_precision="ieee")
        inside = (rows[:, None] < rows_total) & (cols[None, :] < hidden)
        offsets = member * rows_total * hidden + rows[:, None] * hidden + cols[None, :]
        acc = acc + tl.load(drive_ptr + offsets, mask=inside, other=0.0)
        if HAS_TARGET:
            pull = tl.load(pull_ptr + member)
            column = cols - first_output
            nudged = inside & (column[None, :] >= 0)
            target = tl.load(
                target_ptr
                + member * rows_total * outputs
                + rows[:, None] * outputs
                + column[None, :],
                mask=nudged,
                other=0.0,
            )
            acc = tl.where(nudged, acc + pull * (target - acc), acc)
        acc = tl.minimum(tl.maximum(acc, 0.0), 1.0)
        tl.store(out_ptr + offsets, acc, mask=inside)


def euler_step(
    s: torch.Tensor,
    matrix: torch.Tensor,
    drive: torch.Tensor,
    out: torch.Tensor,
    target: torch.Tensor | None,
    pull: torch.Tensor | None,
    first_output: int,
) -> None:
    """out = clamp(drive + s @ matrix, nudged towards target), members x rows x hidden."""
    members, rows, hidden = s.shape
    block_rows = 32 if rows <= 32 else 64
    grid = (members, triton.cdiv(rows, block_rows), triton.cdiv(hidden, 32))
    has_target = target is not None and pull is not None
    _euler_step[grid](
        s,
        matrix,
        drive,
        out,
        target if has_target else s,
        pull if has_target else s,
        rows,
        hidden,
        target.shape[-1] if has_target else 0,
        first_output,
        HAS_TARGET=has_target,
        BR=block_rows,
        BC=32,
        BK=64,
        num_warps=4,
    )


def triton_loop(
    drive: torch.Tensor,
    s: torch.Tensor,
    target: torch.Tensor | None,
    pull: torch.Tensor | None,
    matrix: torch.Tensor,
    steps: int,
    first_output: int,
) -> torch.Tensor:
    """``torchscript.stacked_loop`` with one fused kernel per step (two state buffers in turn)."""
    if target is not None:
        target = target.to(torch.float32).contiguous()
    current, spare = s, torch.empty_like(s)
    for _ in range(steps):
        euler_step(current, matrix, drive, spare, target, pull, first_output)
        current, spare = spare, current
    if current is not s:
        s.copy_(current)
    return s


def single_triton_loop(
    drive: torch.Tensor,
    s: torch.Tensor,
    target: torch.Tensor | None,
    matrix: torch.Tensor,
    steps: int,
    pull: float,
    first_output: int,
) -> torch.Tensor:
    """``torchscript.graph_dense_loop``'s arguments, through :func:`triton_loop` (one member)."""
    pulls = torch.full((1,), pull, dtype=torch.float32, device=s.device)
    state = s.unsqueeze(0)
    triton_loop(
        drive.unsqueeze(0),
        state,
        None if target is None else target.unsqueeze(0),
        pulls,
        matrix.unsqueeze(0),
        steps,
        first_output,
    )
    return s
