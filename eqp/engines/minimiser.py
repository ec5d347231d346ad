"""The minimiser protocol: how an engine settles a batch, and what it reports."""

from __future__ import annotations

from typing import Protocol

import torch


class LayoutError(ValueError):
    """A weight layout was asked for that does not exist or cannot run here."""


class Minimiser(Protocol):
    """Settles a batch; states are hidden+output neurons only (B x (N - inputs)).

    ``last_work`` holds, after each free phase, the passes (Euler steps or sweeps) each
    example cost, and ``last_capped`` which examples stopped at the cap unconverged; the Euler
    engines cost every example the same fixed steps and never converge early.
    """

    name: str
    last_work: torch.Tensor | None
    last_capped: torch.Tensor | None

    def refresh(self) -> None:
        """The network's parameters changed: rebuild any derived layout."""

    def free(self, x: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        """Free phase from ``state`` with inputs ``x``; returns the new state."""

    def nudged(
        self, x: torch.Tensor, state: torch.Tensor, y: torch.Tensor, beta: float, steps: int
    ) -> torch.Tensor:
        """Weakly clamped phase towards targets ``y`` with signed ``beta``."""


def fixed_work(state: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Work of a fixed-step phase: ``steps`` for every example, none stopped at a cap."""
    batch = state.shape[0]
    return torch.full((batch,), steps, dtype=torch.int32), torch.zeros(batch, dtype=torch.bool)
