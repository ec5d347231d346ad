"""Synthetic finished trial folders, written with the real record writers, for the figure and
table tests: plausible decaying errors, deeper pairs learning more slowly, known final numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eqp.outputs.published import load_published
from eqp.outputs.records import (
    TrialRecord,
    atomic_write_json,
    atomic_write_npz,
    sparse_from_dense,
    write_metrics,
)

TINY_SIZES = [6, 4, 4, 4, 2]
PER_LAYER_RATES = [0.128, 0.032, 0.008, 0.002]


def layered_mask(sizes: list[int], p: float, rng: np.random.Generator) -> np.ndarray:
    """Symmetric adjacency of a layered net, each connection rewired to a skip with prob. p."""
    offsets = np.cumsum([0, *sizes])
    n = int(offsets[-1])
    layer_of = np.repeat(np.arange(len(sizes)), sizes)
    mask = np.zeros((n, n), dtype=bool)
    for k in range(len(sizes) - 1):
        mask[offsets[k] : offsets[k + 1], offsets[k + 1] : offsets[k + 2]] = True
    lower = np.tril(mask.T, -1)
    rows, cols = np.nonzero(lower)
    rewired = rng.uniform(size=rows.size) < p
    skip_rows, skip_cols = np.nonzero(np.tril(layer_of[:, None] - layer_of[None, :] >= 2, -1))
    chosen = rng.choice(skip_rows.size, size=min(int(rewired.sum()), skip_rows.size), replace=False)
    lower[rows[rewired][: chosen.size], cols[rewired][: chosen.size]] = False
    lower[skip_rows[chosen], skip_cols[chosen]] = True
    return lower | lower.T


def write_trial(
    folder: Path,
    trial: str,
    seed: int,
    *,
    sizes: list[int] = TINY_SIZES,
    dataset: str = "mnist",
    network_type: str = "MLFF",
    p: float | None = None,
    learning_rate: float | list[float] = 0.02,
    epochs: int = 4,
    batches: int = 5,
    preset: str = "demo",
    train_error: float | None = None,
    test_error: float | None = None,
    log_spread: float | None = None,
    extra_settings: dict[str, Any] | None = None,
    extra_summary: dict[str, Any] | None = None,
) -> TrialRecord:
    """A plausible finished trial folder: errors decay, deeper pairs learn more slowly."""
    rng = np.random.default_rng(seed + 1000 * len(trial))
    n_pairs = len(sizes) - 1
    swni = network_type != "MLFF"
    mask = layered_mask(sizes, p or 0.0, rng)
    n = mask.shape[0]

    start = 0.9 if dataset != "diabetes" else 0.2
    floor = (0.03 if swni else 0.1) * rng.uniform(0.7, 1.3)
    decay = np.exp(-np.arange(epochs + 1) / rng.uniform(1.5, 3.0))
    wobble = rng.lognormal(0.0, 0.05, (2, epochs + 1))
    train = (floor * 0.3 + (start - floor * 0.3) * decay) * wobble[0]
    test = (floor + (start - floor) * decay) * wobble[1]
    train[0] = test[0]
    train[-1] = train[-1] if train_error is None else train_error
    test[-1] = test[-1] if test_error is None else test_error
    write_metrics(
        folder,
        [
            {
                "epoch": e,
                "train_error": float(train[e]),
                "test_error": float(test[e]),
                "saturated_low": int(rng.integers(0, 50)),
                "saturated_high": int(rng.integers(0, 50)),
                "seconds": 0.0 if e == 0 else float(rng.uniform(1, 2)),
            }
            for e in range(epochs + 1)
        ],
    )

    depth_slope = 0.15 if swni else 0.8
    pair_scale = 1e-2 * 10.0 ** (-depth_slope * (n_pairs - 1 - np.arange(n_pairs)))
    epoch_trend = (0.2 + 0.8 * np.exp(-np.arange(epochs) / 3.0))[:, None, None]
    noise = rng.lognormal(0.0, 0.2, (epochs, batches, n_pairs))
    rates = (pair_scale[None, None, :] * epoch_trend * noise).astype(np.float32)
    rates_per_pair = learning_rate if isinstance(learning_rate, list) else [learning_rate] * n_pairs
    atomic_write_npz(
        folder / "layer_rates.npz",
        rates=rates,
        learning_rates=np.asarray(rates_per_pair, dtype=np.float64),
    )

    layer_of = np.repeat(np.arange(len(sizes)), sizes)
    depth = np.maximum(layer_of[:, None], layer_of[None, :])
    mean_dw = rng.lognormal(0.0, 0.5, (n, n)) * 1e-3 * 10.0 ** (-depth_slope * (len(sizes) - depth))
    mean_dw = np.where(mask, mean_dw, 0.0)
    atomic_write_npz(folder / "mean_dw.npz", **sparse_from_dense(mean_dw, mask))
    weights = np.where(mask, rng.uniform(-0.3, 0.3, (n, n)), 0.0).astype(np.float32)
    atomic_write_npz(
        folder / "initial.npz",
        W=np.tril(weights, -1) + np.tril(weights, -1).T,
        mask=mask.astype(np.uint8),
    )

    pair_means = rates.mean(axis=(0, 1))
    realised = float(p or 0.0)
    atomic_write_json(
        folder / "summary.json",
        {
            "trial": trial,
            "seed": seed,
            "preset": preset,
            "settings": {
                "dataset": dataset,
                "layer_sizes": sizes,
                "network_type": network_type,
                "bypass_p": p,
                "bypass_mag": 0.5 if swni else None,
                "learning_rate": learning_rate,
                "epsilon": 0.5,
                "beta": 1.0,
                "free_iterations": 20,
                "weakly_clamped_iterations": 4,
                "batch_size": 20,
                "epochs": epochs,
                "seed": seed,
                **(extra_settings or {}),
            },
            "epochs_run": epochs,
            "initial_test_error": float(test[0]),
            "train_error": float(train[-1]),
            "test_error": float(test[-1]),
            "realised_p": realised,
            "log_spread": float(np.std(np.log10(pair_means))) if log_spread is None else log_spread,
            "layer_rate_means": [float(v) for v in pair_means],
            "seconds": 10.0,
            "versions": {"python": "3.11", "eqp": "0.1.0"},
            **(extra_summary or {}),
        },
    )
    return TrialRecord.open(folder)


def fig2_fig3_records(root: Path, seeds: int = 2, **kwargs: Any) -> dict[str, list[TrialRecord]]:
    specs = {
        "mnist_3layer_mlff": {"network_type": "MLFF", "learning_rate": 0.02},
        "mnist_3layer_mlffpl": {
            "network_type": "MLFF",
            "learning_rate": PER_LAYER_RATES[: len(kwargs.get("sizes", TINY_SIZES)) - 1],
        },
        "mnist_3layer_swni": {"network_type": "SW_no_intra", "p": 0.1, "learning_rate": 0.02},
    }
    return {
        trial: [
            write_trial(root / f"{trial}_s{seed}", trial, seed, **spec, **kwargs)
            for seed in range(seeds)
        ]
        for trial, spec in specs.items()
    }


def fig5_records(root: Path, **kwargs: Any) -> dict[str, TrialRecord]:
    return {
        "mnist_5layer_mlff": write_trial(root / "f5_mlff", "mnist_5layer_mlff", 0, **kwargs),
        "mnist_5layer_swni": write_trial(
            root / "f5_swni", "mnist_5layer_swni", 0, network_type="SW_no_intra", p=0.1, **kwargs
        ),
    }


def sweep_records(
    root: Path, seeds: int = 1, trial: str = "mnist_5layer_swni", **kwargs: Any
) -> list[TrialRecord]:
    """Sweep folders of ``trial`` (the published sweep's base by default) at p = 0 and the
    paper's 31-point grid thinned to every third value: some published, some not."""
    ps = [0.0, *np.logspace(-4, 0, 30)[::3]]
    return [
        write_trial(
            root / f"sweep_p{p:.6f}_s{seed}",
            trial,
            seed,
            network_type="SW_no_intra",
            p=float(p),
            **kwargs,
        )
        for p in ps
        for seed in range(seeds)
    ]


def table_records(root: Path, epochs: int = 2, **kwargs: Any) -> dict[str, list[TrialRecord]]:
    """Two seeds of each Table 1 trial with known final numbers (``kwargs`` go to write_trial)."""
    published = load_published()
    records = {}
    for index, trial in enumerate(published["table1_order"]):
        settings = published["trials"][trial]["settings"]
        records[trial] = [
            write_trial(
                root / f"{trial}_s{seed}",
                trial,
                seed,
                sizes=[3, 2, 2, 1] if settings["dataset"] == "diabetes" else [3, 2, 2, 2],
                dataset=settings["dataset"],
                network_type=settings["network_type"],
                p=settings["bypass_p"],
                epochs=epochs,
                batches=2,
                train_error=0.10 + 0.01 * index + 0.02 * seed,
                test_error=0.20 + 0.01 * index + 0.04 * seed,
                log_spread=0.5 + 0.2 * seed,
                **kwargs,
            )
            for seed in (0, 1)
        ]
    return records


def golden_table_records(root: Path) -> dict[str, list[TrialRecord]]:
    """The inputs of the Table 1 golden files: two seeds of every even-indexed trial, one seed
    of every odd-indexed one, so that rows with and without a standard deviation both occur."""
    records = table_records(root)
    return {
        trial: seeds if index % 2 == 0 else seeds[:1]
        for index, (trial, seeds) in enumerate(records.items())
    }
