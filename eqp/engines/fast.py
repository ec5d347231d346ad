"""How the state settles: the free and the weakly clamped (nudged) phases.

Two interchangeable engines compute the same thing:

* ``DenseReference`` follows the spec's arithmetic step by step on the full N-neuron state
  (every step multiplies the full N x N matrix, input columns zeroed). It is the readable
  oracle the fast engine is tested against.
* ``FastEngine`` evolves only hidden and output neurons. The input is constant within a batch,
  so its drive ``rho(x) W_xh + b`` is folded in once per phase, and states stay in [0, 1], so
  ``rho(s) = s`` and the Euler step ``s + eps (rho(s) W + b - rho(s))`` is a few GEMMs and a
  clamp (see the class for the two weight layouts).

Engines implement the small ``Minimiser`` protocol, so the converged free-phase solver of
:mod:`eqp.engines.converged` replaces the Euler loop without touching training.
"""

from __future__ import annotations

import warnings

import torch

from eqp.engines.backends import c_kernel, torchscript, triton_step
from eqp.engines.backends.cuda_graphs import GraphedLoops
from eqp.engines.minimiser import LayoutError, fixed_work
from eqp.model.network import Network, rho

_CALL_SECONDS = 4e-6
_SPARSE_CALL_SECONDS = 25e-6
_GEMM_FLOPS = 25e9
_SPARSE_FLOPS = 5e9
_DENSE_BLOCK_DENSITY = 0.25
# Smaller populated blocks (e.g. 100 x 10 next to a 10-neuron output layer) cost more as a
# GEMM call of their own than as a few thousand more entries of the CSR product.
_DENSE_BLOCK_MIN_AREA = 2048


LAYOUTS = ("auto", "dense", "blocked", "fused")


class FastEngine:
    """Hidden-only Euler steps with the input drive folded in.

    Three layouts of ``eps W_hh``:

    * ``dense``: one ``addmm`` with ``W' = eps W_hh + (1 - eps) I`` per step and a clamp, in a
      TorchScript loop (small nets, GPUs);
    * ``blocked``: one GEMM per populated layer-to-layer block (adjacent layers, dense intra
      layers) plus one sparse CSR product for the scattered layer-skipping connections, so
      the work per step is close to 2 x batch x non-zero weights. States are kept transposed
      (neurons x batch) so that every layer's rows are contiguous;
    * ``fused``: the same blocks and CSR list in the compiled kernel of
      :mod:`eqp.engines.backends.c_kernel`, which does a whole step per tile of rows in registers
      (CPU only; needs the built extension).

    ``auto`` takes ``fused`` on a CPU where the kernel is built, else the cheaper of the
    other two by a simple cost model. The mask never changes, so the choice and the block
    plan are made once and ``refresh`` only copies new values in. ``threads`` is how many
    cores the fused kernel may use (the other layouts follow torch's thread setting). On a
    CUDA device the dense layout replays each phase as a captured CUDA graph
    (:mod:`eqp.engines.backends.cuda_graphs`) unless ``cuda_graphs`` is False, and
    ``step_kernel`` chooses cuBLAS (``addmm`` and a clamp) or one fused Triton kernel
    (:mod:`eqp.engines.backends.triton_step`) per step.
    """

    name = "fast"

    def __init__(
        self,
        network: Network,
        epsilon: float,
        layout: str = "auto",
        threads: int = 1,
        cuda_graphs: bool = True,
        step_kernel: str = "cublas",
    ) -> None:
        if layout not in LAYOUTS:
            raise LayoutError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        check_step_kernel(step_kernel, network.weights.device)
        self.net = network
        self.eps = epsilon
        self.last_work = self.last_capped = None
        self._plan_blocks()
        on_cpu = network.weights.device.type == "cpu"
        if layout == "fused":
            reason = c_kernel.unavailable_reason()
            if not on_cpu:
                reason = f"the fused layout runs on the CPU only, not {network.weights.device}"
            if reason is not None:
                raise LayoutError(f"layout 'fused' is not available: {reason}")
        if layout == "auto":
            fused_ok = on_cpu and network.weights.dtype == torch.float32
            if fused_ok and c_kernel.unavailable_reason() is None:
                layout = "fused"
            else:
                layout = self._cheaper_layout()
        self.layout = layout
        self.fused = None
        self.step_matrix: torch.Tensor | None = None
        on_cuda = network.weights.device.type == "cuda"
        self.graphs = GraphedLoops() if layout == "dense" and on_cuda and cuda_graphs else None
        self.step_kernel = step_kernel if on_cuda else "cublas"
        if layout == "fused":
            mask = network.mask[network.n_inputs :, network.n_inputs :]
            self.fused = c_kernel.FusedSteps(mask, self._bounds, self.fused_blocks, threads=threads)
        self.refresh()

    def _plan_blocks(self) -> None:
        """Group populated layer-to-layer blocks into runs that one batched GEMM can do.

        Blocks at the same layer offset between equally sized consecutive layers (the
        paper's hidden layers) are contiguous in the transposed state, so a run of them is a
        single ``baddbmm``; the scattered rest of the mask goes to one CSR matrix.
        """
        n_in = self.net.n_inputs
        mask = self.net.mask[n_in:, n_in:] != 0
        bounds = [o - n_in for o in self.net.offsets[1:]]
        self._bounds = bounds
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        covered = torch.zeros_like(mask)
        dense_pairs = []
        self.fused_blocks: list[tuple[int, int]] = []
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            for j, (c, d) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                count = int(mask[a:b, c:d].sum())
                area = (b - a) * (d - c)
                if count >= _DENSE_BLOCK_DENSITY * area:
                    # The fused kernel pays no per-call cost, so small blocks stay dense.
                    self.fused_blocks.append((i, j))
                    if area >= _DENSE_BLOCK_MIN_AREA:
                        dense_pairs.append((i, j))
                        covered[a:b, c:d] = True
        self.runs: list[tuple[int, int, int, int, int]] = []
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
            self.runs.append((bounds[i], bounds[j], count, sizes[i], sizes[j]))
        self._run_lists = [list(run) for run in self.runs]
        rest = mask & ~covered
        self.hidden = mask.shape[0]
        self._sparse_index = None
        if bool(rest.any()):
            self._sparse_index = c_kernel.csr_index(rest)

    def _cheaper_layout(self) -> str:
        if self.net.weights.device.type != "cpu":
            return "dense"
        rows = 20
        dense = 2 * rows * self.hidden**2 / _GEMM_FLOPS + 2 * _CALL_SECONDS
        block_area = sum(count * n_dst * n_src for _, _, count, n_dst, n_src in self.runs)
        blocked = 2 * rows * block_area / _GEMM_FLOPS + (len(self.runs) + 2) * _CALL_SECONDS
        if self._sparse_index is not None:
            nnz = len(self._sparse_index[0])
            blocked += _SPARSE_CALL_SECONDS + 2 * rows * nnz / _SPARSE_FLOPS
        return "blocked" if blocked < dense else "dense"

    def refresh(self) -> None:
        n_in = self.net.n_inputs
        w_hh = self.net.weights[n_in:, n_in:]
        self.input_weights_t = self.net.weights[n_in:, :n_in]
        self._last_drive = None
        if self.fused is not None:
            self.fused.refresh(self.eps * w_hh)
            return
        if self.layout == "dense":
            # In place: a captured CUDA graph reads this very storage.
            if self.step_matrix is None:
                self.step_matrix = torch.empty(w_hh.shape, dtype=w_hh.dtype, device=w_hh.device)
            torch.mul(w_hh, self.eps, out=self.step_matrix)
            self.step_matrix.diagonal().add_(1 - self.eps)
            return
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
            for dst, src, count, n_dst, n_src in self.runs
        ]
        self.sparse = None
        if self._sparse_index is not None:
            rows, cols, crow = self._sparse_index
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self.sparse = torch.sparse_csr_tensor(
                    crow,
                    cols,
                    self.eps * w_hh[rows, cols],
                    (self.hidden, self.hidden),
                    check_invariants=False,
                )

    def forget_drive(self) -> None:
        """The weights changed in place and the packed copy with them (the compiled update
        writes both): only the cached input drive is stale."""
        self._last_drive = None

    @property
    def bounds(self) -> list[int]:
        """Layer boundaries within the hidden+output state (0, ..., hidden)."""
        return list(self._bounds)

    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """eps * (W_hx rho(x) + b_h), transposed: everything a step needs that does not move.

        The nudged phase of a batch reuses its free phase's drive (same inputs, same weights:
        ``refresh`` forgets it), which saves one input-sized product per batch.
        """
        if self._last_drive is not None:
            inputs, version, drive = self._last_drive
            if inputs is x and version == x._version:
                return drive
        hidden_bias = self.net.biases[self.net.n_inputs :, None]
        inputs = rho(x.to(self.net.weights.dtype))
        drive = self.eps * torch.addmm(hidden_bias, self.input_weights_t, inputs.T)
        self._last_drive = (x, x._version, drive)
        return drive

    def _settle(
        self,
        x: torch.Tensor,
        state: torch.Tensor,
        steps: int,
        target: torch.Tensor | None,
        pull: float,
    ) -> torch.Tensor:
        drive = self.drive(x)
        first_output = self.net.output_slice.start
        if self.fused is not None:
            return self.fused.settle(drive, state, 1 - self.eps, steps, target, pull, first_output)
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
        if self.layout == "dense":
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
        s = state.T.contiguous()
        s = torchscript.compiled("blocked_loop")(
            drive,
            s,
            torch.empty_like(s),
            *self._blocked_arguments(),
            steps,
            None if target is None else target.T,
            pull,
            first_output,
        )
        return s.T.contiguous()

    def free(self, x: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        self.last_work, self.last_capped = fixed_work(state, steps)
        return self._settle(x, state, steps, None, 0.0)

    def nudged(
        self, x: torch.Tensor, state: torch.Tensor, y: torch.Tensor, beta: float, steps: int
    ) -> torch.Tensor:
        return self._settle(x, state, steps, y, 2 * self.eps * beta)

    def _blocked_arguments(self) -> tuple:
        return (1 - self.eps, self._run_lists, self.run_values, self.sparse)


def check_step_kernel(step_kernel: str, device: torch.device) -> None:
    """One clear error for a step kernel that does not exist or cannot run on ``device``."""
    if step_kernel not in triton_step.STEP_KERNELS:
        raise LayoutError(
            f"unknown step kernel {step_kernel!r}; use one of {', '.join(triton_step.STEP_KERNELS)}"
        )
    if step_kernel == "triton":
        if device.type != "cuda":
            raise LayoutError(f"step kernel 'triton' runs on CUDA devices only, not {device}")
        reason = triton_step.unavailable_reason()
        if reason is not None:
            raise LayoutError(f"step kernel 'triton' is not available: {reason}")
