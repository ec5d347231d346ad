"""How figures and Table 1 name things: data sets, units, topologies, settle methods.

Shared by :mod:`eqp.outputs.table` and :mod:`eqp.outputs.figures`, so a figure and the table
never describe one run in two ways.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eqp.config.settings import batch_counts

REGRESSION_DATASETS = frozenset({"diabetes"})
DATASET_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def is_classification(dataset: str) -> bool:
    return dataset not in REGRESSION_DATASETS


def error_scale(dataset: str) -> tuple[float, str]:
    """Factor turning a stored error into the unit shown, and that unit's name."""
    return (100.0, "% error") if is_classification(dataset) else (1.0, "mean cost")


def topology_label(settings: Mapping[str, Any]) -> str:
    """'MLFF' or 'SW (p=0.1)', from a trial's settings."""
    network_type = settings["network_type"]
    if network_type == "MLFF":
        return "MLFF"
    name = {"SW_no_intra": "SW", "SW_intra": "SW-intra"}.get(network_type, network_type)
    return f"{name} (p={float(settings['bypass_p']):g})"


def settle_label(settings: Mapping[str, Any]) -> str:
    """How the phases were settled: 'euler' (the published fixed Euler steps, and the only
    method of folders older than the setting) or e.g. 'sor (tol 1e-05)'."""
    method = str(settings.get("settle") or "euler")
    tolerance = settings.get("settle_tol")
    return f"{method} (tol {float(tolerance):g})" if method == "sor" and tolerance else method


def examples_used(summary: Mapping[str, Any]) -> tuple[int, int]:
    """Training and test examples per epoch: whole batches × batch size (partial batches are
    dropped), from the recorded batch counts, else as the settings cut the data set."""
    settings = summary["settings"]
    size = int(settings["batch_size"])
    batches = summary.get("batches_per_epoch")
    if isinstance(batches, Mapping) and {"train", "test"} <= set(batches):
        return int(batches["train"]) * size, int(batches["test"]) * size
    n_train, n_test = batch_counts(
        settings["dataset"], size, settings.get("train_examples"), settings.get("test_examples")
    )
    return n_train * size, n_test * size


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def data_label(summary: Mapping[str, Any]) -> str:
    """E.g. 'MNIST: 60000 train / 10000 test examples'."""
    train, test = examples_used(summary)
    return f"{dataset_name(summary['settings']['dataset'])}: {train} train / {test} test examples"


def joined(values: Iterable[Any], separator: str = ", ") -> str:
    """The distinct values, sorted, as one string (one value shows alone)."""
    return separator.join(sorted({str(value) for value in values}))
