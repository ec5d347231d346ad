"""How the state settles: the free and the weakly clamped (nudged) phases.

Two interchangeable engines compute the same thing:

* ``DenseReference`` follows the spec's arithmetic step by step on the full N-neuron state
  (every step multiplies the full N x N matrix, input columns zeroed). It is the readable
  oracle the fast engine is tested against.
* ``FastEngine`` evolves only hidden and output neurons. The input is constant within a batch,
  so its drive ``rho(x) W_xh + b`` is folded in once per phase, and states stay in [0, 1], so
  ``rho(s) = s`` and the Euler step ``s + eps (rho(s) W + b - rho(s))`` is a few GEMMs and a
  clamp, in one of the weight layouts of :mod:`eqp.engines.layouts`.

Engines implement the small ``Minimiser`` protocol, so the converged free-phase solver of
:mod:`eqp.engines.converged` replaces the Euler loop without touching training.
"""

from __future__ import annotations

import torch

from eqp.engines.backends import c_kernel, triton_step
from eqp.engines.backends.cuda_graphs import GraphedLoops
from eqp.engines.layouts import BlockedLayout, BlockPlan, DenseLayout, FusedLayout
from eqp.engines.minimiser import LayoutError, fixed_work
from eqp.model.network import Network, rho

LAYOUTS = ("auto", "dense", "blocked", "fused")


class FastEngine:
    """Hidden-only Euler steps with the input drive folded in, in one weight layout.

    ``layout`` is ``dense``, ``blocked`` or ``fused`` (:mod:`eqp.engines.layouts`); ``auto``
    takes ``fused`` on a CPU where the kernel is built, else the cheaper of the other two by
    a simple cost model. ``threads`` is how many cores the fused kernel may use (the other
    layouts follow torch's thread setting). On a CUDA device the dense layout replays each
    phase as a captured CUDA graph (:mod:`eqp.engines.backends.cuda_graphs`) unless
    ``cuda_graphs`` is False, and ``step_kernel`` chooses cuBLAS (``addmm`` and a clamp) or
    one fused Triton kernel (:mod:`eqp.engines.backends.triton_step`) per step.
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
        device = network.weights.device
        check_step_kernel(step_kernel, device)
        self.net = network
        self.eps = epsilon
        self.last_work = self.last_capped = None
        self.plan = BlockPlan.of(network)
        self.layout = self._choose_layout(layout)
        self.step_kernel = step_kernel if device.type == "cuda" else "cublas"
        if self.step_kernel == "triton" and self.layout != "dense":
            raise LayoutError(
                f"step kernel 'triton' steps the dense layout only, not {self.layout!r}; "
                "use layout dense (or auto) with it"
            )
        self._layout: DenseLayout | BlockedLayout | FusedLayout
        if self.layout == "fused":
            self._layout = FusedLayout(network, self.plan, epsilon, threads)
        elif self.layout == "blocked":
            self._layout = BlockedLayout(self.plan, epsilon)
        else:
            self._layout = DenseLayout(epsilon, device, cuda_graphs, self.step_kernel)
        self.refresh()

    def _choose_layout(self, layout: str) -> str:
        network = self.net
        on_cpu = network.weights.device.type == "cpu"
        if layout == "fused":
            reason = c_kernel.unavailable_reason()
            if not on_cpu:
                reason = f"the fused layout runs on the CPU only, not {network.weights.device}"
            if reason is not None:
                raise LayoutError(f"layout 'fused' is not available: {reason}")
        if layout != "auto":
            return layout
        fused_ok = on_cpu and network.weights.dtype == torch.float32
        if fused_ok and c_kernel.unavailable_reason() is None:
            return "fused"
        return self.plan.cheaper_layout(network.weights.device)

    @property
    def fused(self) -> c_kernel.FusedSteps | None:
        """The compiled kernel's state of this net (fused layout only): what the converged
        settler and the compiled weight update call."""
        return self._layout.steps if isinstance(self._layout, FusedLayout) else None

    @property
    def graphs(self) -> GraphedLoops | None:
        """The CUDA-graph cache of the dense layout on a GPU, else None."""
        return self._layout.graphs if isinstance(self._layout, DenseLayout) else None

    @property
    def fused_blocks(self) -> list[tuple[int, int]]:
        return self.plan.fused_blocks

    @property
    def bounds(self) -> list[int]:
        """Layer boundaries within the hidden+output state (0, ..., hidden)."""
        return list(self.plan.bounds)

    def refresh(self) -> None:
        n_in = self.net.n_inputs
        self.input_weights_t = self.net.weights[n_in:, :n_in]
        self._last_drive = None
        self._layout.refresh(self.net.weights[n_in:, n_in:])

    def forget_drive(self) -> None:
        """The weights changed in place and the packed copy with them (the compiled update
        writes both): only the cached input drive is stale."""
        self._last_drive = None

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

    def free(self, x: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        self.last_work, self.last_capped = fixed_work(state, steps)
        first_output = self.net.output_slice.start
        return self._layout.settle(self.drive(x), state, steps, None, 0.0, first_output)

    def nudged(
        self, x: torch.Tensor, state: torch.Tensor, y: torch.Tensor, beta: float, steps: int
    ) -> torch.Tensor:
        pull = 2 * self.eps * beta
        first_output = self.net.output_slice.start
        return self._layout.settle(self.drive(x), state, steps, y, pull, first_output)


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
