"""Figures and Table 1 from synthetic trial folders written with the real record writers."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eqp import figures
from eqp.records import (
    TrialRecord,
    atomic_write_json,
    atomic_write_npz,
    sparse_from_dense,
    write_metrics,
)
from eqp.table import MissingTrialsError, build_table1, load_published, write_table1

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


def sweep_records(root: Path, seeds: int = 1, **kwargs: Any) -> list[TrialRecord]:
    ps = [0.0, *np.logspace(-4, 0, 9)]
    return [
        write_trial(
            root / f"sweep_p{p:.6f}_s{seed}",
            "mnist_5layer_sweep",
            seed,
            network_type="SW_no_intra",
            p=float(p),
            **kwargs,
        )
        for p in ps
        for seed in range(seeds)
    ]


def assert_pdf_and_png(paths: tuple[Path, Path], stem: Path) -> None:
    pdf, png = paths
    assert pdf == stem.with_suffix(".pdf") and png == stem.with_suffix(".png")
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000
    assert not list(stem.parent.glob(".*.tmp"))


def test_fig2_and_fig3_write_pdf_and_png(tmp_path: Path) -> None:
    records = fig2_fig3_records(tmp_path / "trials")
    out = tmp_path / "figures"
    assert_pdf_and_png(figures.fig2(records, out / "fig2.pdf", "demo"), out / "fig2")
    assert_pdf_and_png(figures.fig3(records, out / "fig3.png", "demo"), out / "fig3")


def test_figures_accept_single_records_and_folder_paths(tmp_path: Path) -> None:
    records = fig2_fig3_records(tmp_path / "trials", seeds=1)
    as_paths = {label: str(seeds[0].folder) for label, seeds in records.items()}
    assert_pdf_and_png(figures.fig2(as_paths, tmp_path / "f2"), tmp_path / "f2")


def test_fig4_handles_p_zero_and_log_spaced_p(tmp_path: Path) -> None:
    sweep = sweep_records(tmp_path / "sweep", seeds=2)
    assert sorted({figures._sweep_p(r) for r in sweep})[0] == 0.0
    assert_pdf_and_png(figures.fig4(sweep, tmp_path / "fig4", "paper"), tmp_path / "fig4")


def test_fig4_without_p_zero(tmp_path: Path) -> None:
    sweep = [r for r in sweep_records(tmp_path / "sweep") if figures._sweep_p(r) > 0]
    assert_pdf_and_png(figures.fig4(sweep, tmp_path / "fig4", "demo"), tmp_path / "fig4")


def test_fig5_writes_pdf_and_png(tmp_path: Path) -> None:
    records = fig5_records(tmp_path / "trials", sizes=[6, 4, 4, 4, 4, 4, 2])
    assert_pdf_and_png(figures.fig5(records, tmp_path / "fig5", "demo"), tmp_path / "fig5")


def test_preset_is_read_from_summaries_when_not_given(tmp_path: Path) -> None:
    records = fig2_fig3_records(tmp_path / "trials", seeds=1, preset="paper")
    flat = [r for seeds in records.values() for r in seeds]
    assert figures._preset_text(flat, None) == "paper"
    assert figures._preset_text(flat, "demo") == "demo"


def table_records(root: Path) -> dict[str, list[TrialRecord]]:
    """Two seeds of each Table 1 trial with known final numbers."""
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
                epochs=2,
                batches=2,
                train_error=0.10 + 0.01 * index + 0.02 * seed,
                test_error=0.20 + 0.01 * index + 0.04 * seed,
                log_spread=0.5 + 0.2 * seed,
            )
            for seed in (0, 1)
        ]
    return records


def test_table1_rows_in_paper_order_with_paper_values(tmp_path: Path) -> None:
    published = load_published()
    records = table_records(tmp_path)
    records["mnist_3layer_mlffpl"] = records["mnist_3layer_mlff"]
    rows = build_table1(dict(reversed(list(records.items()))), published)

    assert [row["trial"] for row in rows] == published["table1_order"]
    for index, row in enumerate(rows):
        final = published["trials"][row["trial"]]["final"]
        scale = 1.0 if row["dataset"] == "diabetes" else 100.0
        assert row["units"] == ("mean cost" if scale == 1.0 else "% error")
        assert row["n_seeds"] == 2 and row["seeds"] == "0 1"
        train_mean = (0.11 + 0.01 * index) * scale
        assert row["train_error_mean"] == pytest.approx(train_mean)
        assert row["train_error_sd"] == pytest.approx(0.02 / math.sqrt(2) * scale)
        assert row["test_error_mean"] == pytest.approx((0.22 + 0.01 * index) * scale)
        assert row["test_error_sd"] == pytest.approx(0.04 / math.sqrt(2) * scale)
        assert row["log_spread_mean"] == pytest.approx(0.6)
        assert row["log_spread_sd"] == pytest.approx(0.2 / math.sqrt(2))
        assert row["paper_train_error"] == pytest.approx(final["train_error"] * scale)
        assert row["diff_train_error"] == pytest.approx(train_mean - final["train_error"] * scale)
        if final["log_spread"] is None:
            assert row["paper_log_spread"] is None and row["diff_log_spread"] is None
        else:
            assert row["diff_log_spread"] == pytest.approx(0.6 - final["log_spread"])

    by_trial = {row["trial"]: row for row in rows}
    assert by_trial["diabetes_5layer_mlff"]["layer_sizes"] == "3-2-2-1"
    assert by_trial["wine_5layer_mlff"]["topology"] == "MLFF"
    assert by_trial["wine_5layer_swni"]["topology"] == "SW (p=0.1)"
    assert by_trial["mnist_3layer_mlff"]["paper_test_error"] == pytest.approx(2.87)


def test_table1_single_seed_has_no_sd(tmp_path: Path) -> None:
    records = {trial: seeds[:1] for trial, seeds in table_records(tmp_path).items()}
    rows = build_table1(records, load_published())
    assert all(row["n_seeds"] == 1 and row["train_error_sd"] is None for row in rows)
    write_table1(rows, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    assert "±" not in (tmp_path / "t.md").read_text().split("Ours:")[0]


def test_table1_writers(tmp_path: Path) -> None:
    rows = build_table1(table_records(tmp_path / "trials"))
    paths = [tmp_path / "out" / name for name in ("table1.csv", "table1.md", "table1.tex")]
    write_table1(rows, *paths)

    with open(paths[0], newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["trial"] for r in csv_rows] == load_published()["table1_order"]
    assert float(csv_rows[0]["train_error_mean"]) == rows[0]["train_error_mean"]
    mnist = next(r for r in csv_rows if r["trial"] == "mnist_3layer_mlff")
    assert mnist["paper_log_spread"] == "" and mnist["units"] == "% error"

    markdown = paths[1].read_text()
    wine_cells = (
        "wine_5layer_mlff | wine | 3-2-2-2 | MLFF | % error | 2 / 10 | 15.00 ± 1.41 | 68.00"
    )
    assert f"| {wine_cells} | -53.00 |" in markdown
    assert "| 0.1100 ± 0.0141 | 0.0326 | +0.0774 |" in markdown
    assert "| diabetes_5layer_mlff | diabetes | 3-2-2-1 | MLFF | mean cost | 2 / 10 |" in markdown

    latex = paths[2].read_text()
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"\midrule" in latex
    assert r"diabetes\_5layer\_mlff" in latex and r"$\pm$" in latex
    assert "_5layer" not in latex.replace(r"\_5layer", "")
    for trial in load_published()["table1_order"]:
        assert trial in markdown and trial.replace("_", r"\_") in latex


def test_table1_missing_trials_are_named(tmp_path: Path) -> None:
    records = table_records(tmp_path)
    del records["wine_8layer_swni"]
    records["fmnist_5layer_mlff"] = []
    with pytest.raises(MissingTrialsError, match="wine_8layer_swni, fmnist_5layer_mlff"):
        build_table1(records, load_published())


def test_table1_rejects_a_folder_of_another_trial(tmp_path: Path) -> None:
    records = table_records(tmp_path)
    records["wine_5layer_mlff"] = records["wine_8layer_mlff"]
    with pytest.raises(ValueError, match="wine_8layer_mlff"):
        build_table1(records, load_published())
