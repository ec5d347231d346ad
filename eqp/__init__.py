"""Equilibrium propagation on layered networks with layer-skipping connections.

A faithful and fast rebuild of Gammell, Buckley, Nam & McCaughan (2021); see README.md.

``eqp.Network`` is the authors' Python API (eqp.api) and ``eqp.datasets`` their data set
classes. Both are imported on first use, so ``import eqp`` (which the Snakefile does to build
its DAG) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_DATASETS = ("MNIST", "FashionMNIST", "Diabetes", "Wine")

__all__ = ["Network", "datasets", *_DATASETS]


def __getattr__(name: str) -> Any:
    if name == "Network":
        return importlib.import_module(".api", __name__).Network
    if name == "datasets":
        return importlib.import_module(".datasets", __name__)
    if name in _DATASETS:
        return getattr(importlib.import_module(".datasets", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
