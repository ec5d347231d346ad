"""Which engine settles a trial: the reference or the fast one, and its step kernel."""

from __future__ import annotations

from eqp.engines.fast import FastEngine
from eqp.engines.minimiser import LayoutError, Minimiser
from eqp.engines.reference import DenseReference
from eqp.model.network import Network

ENGINES = {"dense": DenseReference, "fast": FastEngine}


def make_engine(
    name: str,
    network: Network,
    epsilon: float,
    layout: str = "auto",
    threads: int = 1,
    cuda_graphs: bool = True,
    step_kernel: str = "cublas",
) -> Minimiser:
    """Engine ``name``; ``layout`` chooses the fast engine's weight layout (see FastEngine)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "dense":
        if layout != "auto":
            raise LayoutError(f"layout {layout!r} applies to the fast engine only")
        return DenseReference(network, epsilon)
    return FastEngine(network, epsilon, layout, threads, cuda_graphs, step_kernel)
