"""Scores of settled outputs and the errors made of them, shared by a trial and an ensemble.

Kept in one place so that a stacked member's error is computed exactly as its separate run's:
the same reductions, the same float64 sums in batch order, the same last-bit formulas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class WorkTally:
    """Free-phase work (Euler steps or SOR passes) per example over one epoch's phases."""

    examples: int = 0
    total: int = 0
    most: int = 0
    capped: int = 0

    @classmethod
    def euler(cls, examples: int, steps: int) -> WorkTally:
        """The tally of a pass of ``steps`` Euler steps for each of ``examples`` examples."""
        return cls(examples, examples * steps, steps, 0)

    def add(self, work: torch.Tensor | None, capped: torch.Tensor | None) -> None:
        if work is None or capped is None:
            return
        self.examples += int(work.numel())
        self.total += int(work.sum())
        self.most = max(self.most, int(work.max()))
        self.capped += int(capped.sum())

    def columns(self, split: str) -> dict[str, float | int | None]:
        """metrics.csv cells: mean and max work per example and the capped count (empty
        when the split ran no free phase, e.g. training before epoch 1)."""
        if not self.examples:
            return {f"{split}_work_mean": None, f"{split}_work_max": None, f"{split}_capped": None}
        return {
            f"{split}_work_mean": self.total / self.examples,
            f"{split}_work_max": self.most,
            f"{split}_capped": self.capped,
        }


@dataclass
class Evaluation:
    error: float
    saturated_low: int
    saturated_high: int
    work: WorkTally = field(default_factory=WorkTally)


def score(outputs: torch.Tensor, targets: torch.Tensor, classification: bool) -> torch.Tensor:
    """Per batch (the last two axes are examples x outputs; any leading ones, e.g. members,
    are kept) the correct count (first maximal index) or the batch's mean cost."""
    if classification:
        return (outputs.argmax(-1) == targets.argmax(-1)).sum(-1)
    return (0.5 * ((targets - outputs) ** 2).sum(-1)).mean(-1)


def error(
    scores: float | np.ndarray,
    examples: int,
    batches: int,
    classification: bool,
    *,
    training: bool,
) -> float:
    """The error of a pass over ``batches`` batches of ``examples`` examples in all, from its
    per-batch scores (float64, in batch order) or their running float64 total.

    Costs are summed in batch order and averaged over the batches. Counts keep the authors'
    two formulas, which differ in the last bit: a training epoch's (examples - correct) /
    examples, an evaluation's 1 - correct / examples.
    """
    total = sum(float(v) for v in np.atleast_1d(scores))
    if not classification:
        return float(total) / batches
    if training:
        return (examples - int(total)) / examples
    return 1 - int(total) / examples
