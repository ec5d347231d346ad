"""Converged settling of the free phase: projected layer-wise SOR to a true fixed point.

The published free phase is a fixed number of Euler steps (1000 on the 5-layer nets), most of
which creep towards a fixed point ``s = clamp(W s + b)`` that SOR reaches in a few dozen
sweeps. ``settle: sor`` (a trial setting; ``euler`` stays the default and the faithful
mode) replaces the free phase by this method; the weakly clamped phase stays the published
Euler steps, whose truncation is part of the learning rule.

The method, per example (column):

* **Euler warm-up.** Faithful Euler steps while the fixed-point residual
  ``|clamp(h) - s|_inf`` (``h = W s + b + W_x x``) is at least ``warmup_tol``, or the
  stricter ``cold_warmup_tol`` for an example starting from all zeros (the particles of the
  first epoch): a start far from equilibrium follows the published dynamics into its basin
  instead of jumping to another of the energy's minima.
* **SOR sweeps.** Each layer in turn is set, in place, to ``clamp((1 - omega) s + omega h)``.
  Without connections inside a layer ``clamp(h)`` is the layer's exact minimiser given the
  others, so for ``0 < omega < 2`` no sweep raises the energy of the spec's section 4.
  Networks with intra-layer connections (SW_intra) are refused (``settings`` says so).
* **Stop.** When a sweep's residual is at most ``settle_tol``, one more pass measures the
  true residual at the unchanged state; the example stops there if it is within the
  tolerance too, else it sweeps on. An example that reaches ``settle_max_steps`` passes
  (default: the trial's Euler steps) stops unconverged and is counted as capped.

A stopped example no longer changes, so its result does not depend on the other examples of
its batch, on the kernel's strip width or on the thread count. On CPUs the fused C kernel
runs all of this (``eqp_converge`` in ``eqp/csrc/settle.c``); elsewhere (GPUs, no kernel) the
torch implementation below computes the same per-example method with dense products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eqp.engines.fast import FastEngine
from eqp.engines.minimiser import Minimiser
from eqp.model.network import Network

# Chosen by measurement (docs/converged-settling.md): see eqp.studies.bench and the
# equivalence study.
OMEGA = 1.6
WARMUP_TOL = 0.1
COLD_WARMUP_TOL = 0.05

EULER, SWEEP, CHECK, DONE = 0, 1, 2, 3


class ConvergenceError(ValueError):
    """Converged settling cannot run on this network."""


@dataclass(frozen=True)
class SorParameters:
    """Everything that shapes a converged free phase besides the network and the batch."""

    epsilon: float
    tol: float
    max_steps: int | None = None
    omega: float = OMEGA
    warmup_tol: float = WARMUP_TOL
    cold_warmup_tol: float = COLD_WARMUP_TOL

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "method": "sor",
            "tol": self.tol,
            "max_steps": self.max_steps,
            "omega": self.omega,
            "warmup_tol": self.warmup_tol,
            "cold_warmup_tol": self.cold_warmup_tol,
        }


def layer_bounds(network: Network) -> list[int]:
    """Layer boundaries within the hidden+output state: 0, ..., hidden."""
    return [o - network.n_inputs for o in network.offsets[1:]]


def intra_layer_connections(network: Network) -> bool:
    """Whether any hidden or output layer has connections among its own neurons."""
    offsets = network.offsets
    return any(
        bool(network.mask[a:b, a:b].any()) for a, b in zip(offsets[1:-1], offsets[2:], strict=True)
    )


class ConvergedSettler:
    """A ``Minimiser`` whose free phase settles to a fixed point by SOR.

    ``inner`` (an Euler engine on the same network) runs the weakly clamped phase and
    supplies the input drive; where it is the fast engine's fused CPU layout, the compiled
    kernel also runs the free phase, otherwise :func:`sor_settle` does.
    """

    def __init__(self, inner: Minimiser, network: Network, parameters: SorParameters) -> None:
        if intra_layer_connections(network):
            raise ConvergenceError(
                "settle: sor needs a network without connections inside a layer (MLFF or "
                "SW_no_intra); this one has them (SW_intra): use settle: euler"
            )
        if not 0 < parameters.omega < 2:
            raise ConvergenceError(f"SOR needs 0 < omega < 2, got {parameters.omega}")
        self.inner = inner
        self.net = network
        self.parameters = parameters
        self.name = inner.name
        self.layout = getattr(inner, "layout", "full")
        self.fused = getattr(inner, "fused", None)
        self.bounds = layer_bounds(network)
        self.last_work: torch.Tensor | None = None
        self.last_capped: torch.Tensor | None = None

    def refresh(self) -> None:
        self.inner.refresh()

    def _drive(self, x: torch.Tensor) -> torch.Tensor:
        """eps (W_hx rho(x) + b_h) as (hidden x batch), as the fast engine folds it."""
        if isinstance(self.inner, FastEngine):
            return self.inner.drive(x)
        n_in = self.net.n_inputs
        inputs = x.to(self.net.weights.dtype).clamp(0, 1)
        weights = self.net.weights[n_in:, :n_in]
        biases = self.net.biases[n_in:, None]
        return self.parameters.epsilon * torch.addmm(biases, weights, inputs.T)

    def free(self, x: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        p = self.parameters
        cap = p.max_steps or steps
        drive = self._drive(x)
        if self.fused is not None:
            settled, work, capped = self.fused.converge(
                drive, state, p.epsilon, p.omega, p.tol, p.warmup_tol, p.cold_warmup_tol, cap
            )
        else:
            n_in = self.net.n_inputs
            scaled = p.epsilon * self.net.weights[n_in:, n_in:]
            settled, work, capped = sor_settle(drive.T, state, scaled, self.bounds, p, cap)
        self.last_work, self.last_capped = work, capped
        return settled

    def nudged(
        self, x: torch.Tensor, state: torch.Tensor, y: torch.Tensor, beta: float, steps: int
    ) -> torch.Tensor:
        return self.inner.nudged(x, state, y, beta, steps)


def sor_settle(
    drive: torch.Tensor,
    state: torch.Tensor,
    scaled_weights: torch.Tensor,
    bounds: list[int],
    parameters: SorParameters,
    max_work: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The converged free phase in torch, any device and dtype: the kernel's method.

    ``drive`` is eps (W_hx x + b) per example (batch x hidden), ``scaled_weights`` eps W_hh
    (symmetric). Returns the settled state, the passes each example cost and whether it
    stopped at ``max_work`` unconverged. Only unfinished examples are computed each pass.
    """
    p = parameters
    s = state.clone()
    batch = s.shape[0]
    mode = torch.full((batch,), EULER, dtype=torch.int8, device=s.device)
    work = torch.zeros(batch, dtype=torch.int32, device=s.device)
    capped = torch.zeros(batch, dtype=torch.bool, device=s.device)
    live = torch.ones(batch, dtype=torch.bool, device=s.device)
    cold = (s == 0).all(1)
    leave = torch.where(cold, p.cold_warmup_tol, p.warmup_tol).to(s.dtype)
    layers = list(zip(bounds[:-1], bounds[1:], strict=True))
    while bool(live.any()):
        rows = live.nonzero().squeeze(1)
        sub, kind, d = s[rows], mode[rows], drive[rows]
        residual = torch.zeros(len(rows), dtype=s.dtype, device=s.device)
        stepped = torch.empty_like(sub)
        # Euler and check passes read one unchanged state: a plain (Jacobi) product.
        jacobi = ((kind == EULER) | (kind == CHECK)).nonzero().squeeze(1)
        if len(jacobi):
            old = sub[jacobi]
            acc = torch.addmm(d[jacobi], old, scaled_weights)
            residual[jacobi] = ((acc / p.epsilon).clamp(0, 1) - old).abs().amax(1)
            stepped[jacobi] = (acc + (1 - p.epsilon) * old).clamp(0, 1)
        sweeping = (kind == SWEEP).nonzero().squeeze(1)
        if len(sweeping):
            current = sub[sweeping]
            worst = torch.zeros(len(sweeping), dtype=s.dtype, device=s.device)
            for a, b in layers:
                old = current[:, a:b]
                h = torch.addmm(d[sweeping, a:b], current, scaled_weights[:, a:b]) / p.epsilon
                worst = torch.maximum(worst, (h.clamp(0, 1) - old).abs().amax(1))
                current[:, a:b] = ((1 - p.omega) * old + p.omega * h).clamp(0, 1)
            residual[sweeping] = worst
            sub[sweeping] = current
        converged = residual <= p.tol
        euler = kind == EULER
        take_step = euler & ~converged
        sub[take_step] = stepped[take_step]
        following = torch.where(
            euler,
            torch.where(
                converged,
                DONE,
                torch.where(residual < leave[rows], SWEEP, EULER),
            ),
            torch.where(
                kind == SWEEP,
                torch.where(converged, CHECK, SWEEP),
                torch.where(converged, DONE, SWEEP),
            ),
        ).to(torch.int8)
        spent = work[rows] + 1
        stop = (following != DONE) & (spent >= max_work)
        following[stop] = DONE
        capped[rows[stop]] = True
        s[rows], mode[rows], work[rows] = sub, following, spent
        live[rows] = following != DONE
    return s, work.cpu(), capped.cpu()


def make_settler(
    inner: Minimiser, network: Network, method: str, parameters: SorParameters | None
) -> Minimiser:
    """``inner`` itself for ``euler``, or the converged free phase around it for ``sor``."""
    if method == "euler":
        return inner
    if method != "sor" or parameters is None:
        raise ConvergenceError(f"unknown settle method {method!r}; use euler or sor")
    return ConvergedSettler(inner, network, parameters)
