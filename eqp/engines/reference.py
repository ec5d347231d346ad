"""The reference engine: the spec's arithmetic step by step on the full N-neuron state
(every step multiplies the full N x N matrix, input columns zeroed). It is the readable
oracle the fast engine is tested against."""

from __future__ import annotations

import torch

from eqp.engines.minimiser import fixed_work
from eqp.model.network import Network, rho


class DenseReference:
    """The spec's section 4, literally: full state, full matrix, every step."""

    name = "dense"

    def __init__(self, network: Network, epsilon: float) -> None:
        self.net = network
        self.eps = epsilon
        self.layout = "full"
        self.last_work = self.last_capped = None

    def refresh(self) -> None:
        return None

    def _full(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.to(state.dtype), state], dim=1)

    def _energy_step(self, s: torch.Tensor) -> torch.Tensor:
        r = rho(s)
        ds = r @ self.net.weights + self.net.biases - r
        ds[:, : self.net.n_inputs] = 0
        return s + self.eps * ds

    def free(self, x: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        s = self._full(x, state)
        for _ in range(steps):
            s = rho(self._energy_step(s))
        self.last_work, self.last_capped = fixed_work(state, steps)
        return s[:, self.net.n_inputs :].contiguous()

    def nudged(
        self, x: torch.Tensor, state: torch.Tensor, y: torch.Tensor, beta: float, steps: int
    ) -> torch.Tensor:
        s = self._full(x, state)
        out = slice(self.net.n_neurons - self.net.layer_sizes[-1], None)
        for _ in range(steps):
            s = self._energy_step(s)
            s[:, out] = s[:, out] + 2 * self.eps * beta * (y - s[:, out])
            s = rho(s)
        return s[:, self.net.n_inputs :].contiguous()


# Rough single-core costs for choosing a layout: seconds per call, and FLOP/s of a small GEMM.
