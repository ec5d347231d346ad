"""How the state settles: the free and the weakly clamped (nudged) phases.

Two interchangeable engines compute the same thing:

* ``DenseReference`` follows the spec's arithmetic step by step on the full N-neuron state
  (every step multiplies the full N x N matrix, input columns zeroed). It is the readable
  oracle the fast engine is tested against.
* ``FastEngine`` evolves only hidden and output neurons. The input is constant within a batch,
  so its drive ``rho(x) W_xh + b`` is folded in once per phase; the Euler step
  ``s + eps (rho(s) W + b - rho(s))`` becomes one fused ``addmm`` with
  ``W' = eps W_hh + (1 - eps) I`` (states stay in [0, 1], so ``rho(s) = s``), then a clamp.

Engines implement the small ``Minimiser`` protocol, so a converged free-phase solver can
replace the Euler loop without touching training.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .network import Network, rho


class Minimiser(Protocol):
    """Settles a batch; states are hidden+output neurons only (B x (N - inputs))."""

    name: str

    def refresh(self) -> None:
        """The network's parameters changed: rebuild any derived layout."""

    def free(self, x: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        """Free phase from ``state`` with inputs ``x``; returns the new state."""

    def nudged(
        self, x: torch.Tensor, state: torch.Tensor, y: torch.Tensor, beta: float, steps: int
    ) -> torch.Tensor:
        """Weakly clamped phase towards targets ``y`` with signed ``beta``."""


class DenseReference:
    """The spec's section 4, literally: full state, full matrix, every step."""

    name = "dense"

    def __init__(self, network: Network, epsilon: float) -> None:
        self.net = network
        self.eps = epsilon

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


class FastEngine:
    """Hidden-only Euler steps with the input drive folded in: one addmm and one clamp a step."""

    name = "fast"

    def __init__(self, network: Network, epsilon: float) -> None:
        self.net = network
        self.eps = epsilon
        self.refresh()

    def refresh(self) -> None:
        n_in = self.net.n_inputs
        w_hh = self.net.weights[n_in:, n_in:]
        step = self.eps * w_hh
        step.diagonal().add_(1 - self.eps)
        self.step_matrix = step
        self.input_weights = self.net.weights[:n_in, n_in:]

    def _drive(self, x: torch.Tensor) -> torch.Tensor:
        """eps * (rho(x) W_xh + b_h): everything a step needs that does not move."""
        hidden_bias = self.net.biases[self.net.n_inputs :]
        inputs = rho(x.to(self.step_matrix.dtype))
        return self.eps * torch.addmm(hidden_bias, inputs, self.input_weights)

    def free(self, x: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        drive = self._drive(x)
        s = state.clone()
        buffer = torch.empty_like(s)
        matrix = self.step_matrix
        for _ in range(steps):
            torch.addmm(drive, s, matrix, out=buffer)
            torch.clamp(buffer, 0, 1, out=s)
        return s

    def nudged(
        self, x: torch.Tensor, state: torch.Tensor, y: torch.Tensor, beta: float, steps: int
    ) -> torch.Tensor:
        drive = self._drive(x)
        s = state.clone()
        buffer = torch.empty_like(s)
        out = buffer[:, self.net.output_slice]
        pull = 2 * self.eps * beta
        matrix = self.step_matrix
        for _ in range(steps):
            torch.addmm(drive, s, matrix, out=buffer)
            out.copy_(out + pull * (y - out))
            torch.clamp(buffer, 0, 1, out=s)
        return s


ENGINES = {"dense": DenseReference, "fast": FastEngine}


def make_engine(name: str, network: Network, epsilon: float) -> Minimiser:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name](network, epsilon)
