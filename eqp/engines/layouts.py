"""The fast engine's three layouts of ``eps W_hh``: how one Euler step is computed.

Every layout settles the same hidden-only Euler steps (:class:`eqp.engines.fast.FastEngine`
supplies the folded-in input drive); they differ in how the weights are laid out and so in
which machine each is fastest on:

* :class:`DenseLayout`: one ``addmm`` with ``W' = eps W_hh + (1 - eps) I`` per step and a
  clamp, in a TorchScript loop (small nets, GPUs; CUDA-graph replays and the Triton step
  kernel run this layout);
* :class:`BlockedLayout`: one GEMM per populated layer-to-layer block plus one sparse CSR
  product for the scattered layer-skipping connections, so the work per step is close to
  2 x batch x non-zero weights; states are kept transposed (neurons x batch) so that every
  layer's rows are contiguous;
* :class:`FusedLayout`: the same blocks and CSR list in the compiled kernel of
  :mod:`eqp.engines.backends.c_kernel`, a whole step per tile of rows in registers (CPU only).

The mask never changes, so the :class:`BlockPlan` is made once and ``refresh`` only copies
new weight values in.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from eqp.engines.backends import c_kernel, torchscript, triton_step
from eqp.engines.backends.cuda_graphs import GraphedLoops
from eqp.model.network import Network

_CALL_SECONDS = 4e-6
_SPARSE_CALL_SECONDS = 25e-6
_GEMM_FLOPS = 25e9
_SPARSE_FLOPS = 5e9
_DENSE_BLOCK_DENSITY = 0.25
# Smaller populated blocks (e.g. 100 x 10 next to a 10-neuron output layer) cost more as a
# GEMM call of their own than as a few thousand more entries of the CSR product.
_DENSE_BLOCK_MIN_AREA = 2048

# A run of equally sized blocks along one diagonal: (dst row, src row, count, n_dst, n_src)
Run = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class BlockPlan:
    """Which layer-to-layer blocks of the hidden mask are dense, and what is left sparse."""

    bounds: list[int]  # layer boundaries within the hidden+output state (0, ..., hidden)
    fused_blocks: list[tuple[int, int]]  # blocks the fused kernel computes densely
    runs: list[Run]  # blocks the blocked layout computes as batched GEMMs
    sparse_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # the rest, as CSR
    hidden: int

    @classmethod
    def of(cls, network: Network) -> BlockPlan:
        """Group populated layer-to-layer blocks into runs that one batched GEMM can do.

        Blocks at the same layer offset between equally sized consecutive layers (the
        paper's hidden layers) are contiguous in the transposed state, so a run of them is a
        single ``baddbmm``; the scattered rest of the mask goes to one CSR matrix.
        """
        n_in = network.n_inputs
        mask = network.mask[n_in:, n_in:] != 0
        bounds = [o - n_in for o in network.offsets[1:]]
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        covered = torch.zeros_like(mask)
        dense_pairs = []
        fused_blocks: list[tuple[int, int]] = []
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            for j, (c, d) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                count = int(mask[a:b, c:d].sum())
                area = (b - a) * (d - c)
                if count >= _DENSE_BLOCK_DENSITY * area:
                    # The fused kernel pays no per-call cost, so small blocks stay dense.
                    fused_blocks.append((i, j))
                    if area >= _DENSE_BLOCK_MIN_AREA:
                        dense_pairs.append((i, j))
                        covered[a:b, c:d] = True
        runs: list[Run] = []
        remaining = sorted(dense_pairs, key=lambda ij: (ij[0] - ij[1], ij[1]))
        while remaining:
            i, j = remaining.pop(0)
            count = 1
            while (
                (i + count, j + count) in remaining
                and sizes[i + count] == sizes[i]
                and sizes[j + count] == sizes[j]
            ):
                remaining.remove((i + count, j + count))
                count += 1
            runs.append((bounds[i], bounds[j], count, sizes[i], sizes[j]))
        rest = mask & ~covered
        sparse_index = c_kernel.csr_index(rest) if bool(rest.any()) else None
        return cls(bounds, fused_blocks, runs, sparse_index, mask.shape[0])

    def cheaper_layout(self, device: torch.device) -> str:
        """``dense`` or ``blocked``, by a simple cost model of one step of 20 rows."""
        if device.type != "cpu":
            return "dense"
        rows = 20
        dense = 2 * rows * self.hidden**2 / _GEMM_FLOPS + 2 * _CALL_SECONDS
        block_area = sum(count * n_dst * n_src for _, _, count, n_dst, n_src in self.runs)
        blocked = 2 * rows * block_area / _GEMM_FLOPS + (len(self.runs) + 2) * _CALL_SECONDS
        if self.sparse_index is not None:
            nnz = len(self.sparse_index[0])
            blocked += _SPARSE_CALL_SECONDS + 2 * rows * nnz / _SPARSE_FLOPS
        return "blocked" if blocked < dense else "dense"


class DenseLayout:
    """``W' = eps W_hh + (1 - eps) I`` and a clamp per step; on CUDA a captured graph per phase
    (unless ``cuda_graphs`` is False) and cuBLAS or the Triton step kernel."""

    name = "dense"

    def __init__(self, eps: float, device: torch.device, cuda_graphs: bool, step_kernel: str):
        self.eps = eps
        self.step_matrix: torch.Tensor | None = None
        on_cuda = device.type == "cuda"
        self.graphs = GraphedLoops() if on_cuda and cuda_graphs else None
        self.step_kernel = step_kernel

    def refresh(self, w_hh: torch.Tensor) -> None:
        # In place: a captured CUDA graph reads this very storage.
        if self.step_matrix is None:
            self.step_matrix = torch.empty(w_hh.shape, dtype=w_hh.dtype, device=w_hh.device)
        torch.mul(w_hh, self.eps, out=self.step_matrix)
        self.step_matrix.diagonal().add_(1 - self.eps)

    def settle(
        self,
        drive: torch.Tensor,
        state: torch.Tensor,
        steps: int,
        target: torch.Tensor | None,
        pull: float,
        first_output: int,
    ) -> torch.Tensor:
        if self.step_kernel == "triton" or self.graphs is not None:
            loop = (
                triton_step.single_triton_loop
                if self.step_kernel == "triton"
                else torchscript.graph_dense_loop
            )
            inputs = (drive.T.contiguous(), state, target)
            constants = (steps, pull, first_output)
            if self.graphs is None:
                return loop(inputs[0], state.clone(), target, self.step_matrix, *constants)
            return self.graphs.run(loop, inputs, (self.step_matrix,), constants)
        s = state.clone()
        return torchscript.compiled("dense_loop")(
            drive.T.contiguous(),
            s,
            self.step_matrix,
            torch.empty_like(s),
            steps,
            target,
            pull,
            first_output,
        )


class BlockedLayout:
    """One batched GEMM per run of dense blocks and one CSR product for the rest, on
    transposed states (neurons x batch)."""

    name = "blocked"

    def __init__(self, plan: BlockPlan, eps: float) -> None:
        self.plan = plan
        self.eps = eps
        self._run_lists = [list(run) for run in plan.runs]
        self.run_values: list[torch.Tensor] = []
        self.sparse: torch.Tensor | None = None

    def refresh(self, w_hh: torch.Tensor) -> None:
        self.run_values = [
            torch.stack(
                [
                    w_hh[
                        dst + k * n_dst : dst + (k + 1) * n_dst,
                        src + k * n_src : src + (k + 1) * n_src,
                    ]
                    for k in range(count)
                ]
            ).mul_(self.eps)
            for dst, src, count, n_dst, n_src in self.plan.runs
        ]
        self.sparse = None
        if self.plan.sparse_index is not None:
            rows, cols, crow = self.plan.sparse_index
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self.sparse = torch.sparse_csr_tensor(
                    crow,
                    cols,
                    self.eps * w_hh[rows, cols],
                    (self.plan.hidden, self.plan.hidden),
                    check_invariants=False,
                )

    def settle(
        self,
        drive: torch.Tensor,
        state: torch.Tensor,
        steps: int,
        target: torch.Tensor | None,
        pull: float,
        first_output: int,
    ) -> torch.Tensor:
        s = state.T.contiguous()
        s = torchscript.compiled("blocked_loop")(
            drive,
            s,
            torch.empty_like(s),
            1 - self.eps,
            self._run_lists,
            self.run_values,
            self.sparse,
            steps,
            None if target is None else target.T,
            pull,
            first_output,
        )
        return s.T.contiguous()


class FusedLayout:
    """The plan's blocks and CSR list in the compiled kernel, a whole step per tile of rows
    (``steps``, a :class:`c_kernel.FusedSteps`; also what the converged settler and the
    compiled weight update call)."""

    name = "fused"

    def __init__(self, network: Network, plan: BlockPlan, eps: float, threads: int) -> None:
        self.eps = eps
        mask = network.mask[network.n_inputs :, network.n_inputs :]
        self.steps = c_kernel.FusedSteps(mask, plan.bounds, plan.fused_blocks, threads=threads)

    def refresh(self, w_hh: torch.Tensor) -> None:
        self.steps.refresh(self.eps * w_hh)

    def settle(
        self,
        drive: torch.Tensor,
        state: torch.Tensor,
        steps: int,
        target: torch.Tensor | None,
        pull: float,
        first_output: int,
    ) -> torch.Tensor:
        return self.steps.settle(drive, state, 1 - self.eps, steps, target, pull, first_output)
