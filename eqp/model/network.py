"""The network's variables and interactions: layers, the symmetric weight matrix, biases.

Parameters are kept as one dense symmetric ``W`` (N x N, float32) and a bias vector, the
representation the published code updates; the dynamics engines derive whatever faster
layout they need from it after each update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eqp.model.topology import Topology, layer_offsets


def rho(s: torch.Tensor) -> torch.Tensor:
    """The hard-sigmoid activation of the paper: clamp to [0, 1]."""
    return s.clamp(0, 1)


@dataclass
class Network:
    """Weights, biases and mask on one device, with the layer bookkeeping around them."""

    layer_sizes: tuple[int, ...]
    weights: torch.Tensor
    biases: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_topology(cls, topology: Topology, device: str | torch.device = "cpu") -> Network:
        n = topology.weights.shape[0]
        return cls(
            layer_sizes=topology.layer_sizes,
            weights=torch.from_numpy(topology.weights.copy()).to(device),
            biases=torch.zeros(n, dtype=torch.float32, device=device),
            mask=torch.from_numpy(topology.mask.astype(np.float32)).to(device),
        )

    @property
    def offsets(self) -> list[int]:
        return [int(o) for o in layer_offsets(self.layer_sizes)]

    @property
    def n_neurons(self) -> int:
        return self.offsets[-1]

    @property
    def n_inputs(self) -> int:
        return self.layer_sizes[0]

    @property
    def n_pairs(self) -> int:
        return len(self.layer_sizes) - 1

    @property
    def output_slice(self) -> slice:
        """Output neurons, indexed within the non-input (hidden + output) state."""
        return slice(self.n_neurons - self.n_inputs - self.layer_sizes[-1], None)

    def pair_block(self, k: int) -> tuple[slice, slice]:
        """Rows of layer k and columns of layer k+1: one triangle of ``conn_k``."""
        o = self.offsets
        return slice(o[k], o[k + 1]), slice(o[k + 1], o[k + 2])

    def energy(self, state: torch.Tensor) -> torch.Tensor:
        """Hopfield energy of full states (B x N): 0.5|rho|^2 - 0.5 rho W rho - b rho."""
        r = rho(state)
        return 0.5 * (r * r).sum(1) - 0.5 * ((r @ self.weights) * r).sum(1) - r @ self.biases

    def pair_learning_rate_matrix(self, rates: tuple[float, ...]) -> torch.Tensor:
        """Factor per entry of dW: lr_k inside conn_k, 1 elsewhere (skip connections)."""
        factor = torch.ones_like(self.weights)
        for k, rate in enumerate(rates):
            rows, cols = self.pair_block(k)
            factor[rows, cols] = rate
            factor[cols, rows] = rate
        return factor
