"""Figures and Table 1 from synthetic trial folders written with the real record writers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from synthetic_trials import fig2_fig3_records, fig5_records, sweep_records, table_records
from table_files import csv_records, markdown_records

from eqp import figures
from eqp.table import MissingTrialsError, build_table1, load_published, write_table1


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


def test_table1_rows_in_paper_order_with_paper_values(tmp_path: Path) -> None:
    published = load_published()
    records = table_records(tmp_path)
    records["mnist_3layer_mlffpl"] = records["mnist_3layer_mlff"]
    table = build_table1(dict(reversed(list(records.items()))), published)

    assert isinstance(table, pd.DataFrame)
    assert table["trial"].tolist() == published["table1_order"]
    for index, row in enumerate(table.to_dict("records")):
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
            assert pd.isna(row["paper_log_spread"]) and pd.isna(row["diff_log_spread"])
        else:
            assert row["diff_log_spread"] == pytest.approx(0.6 - final["log_spread"])

    by_trial = table.set_index("trial")
    assert by_trial.loc["diabetes_5layer_mlff", "layer_sizes"] == "3-2-2-1"
    assert by_trial.loc["wine_5layer_mlff", "topology"] == "MLFF"
    assert by_trial.loc["wine_5layer_swni", "topology"] == "SW (p=0.1)"
    assert by_trial.loc["mnist_3layer_mlff", "paper_test_error"] == pytest.approx(2.87)


def test_table1_single_seed_has_no_sd(tmp_path: Path) -> None:
    records = {trial: seeds[:1] for trial, seeds in table_records(tmp_path).items()}
    table = build_table1(records, load_published())
    assert (table["n_seeds"] == 1).all() and table["train_error_sd"].isna().all()
    write_table1(table, tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "t.tex")
    assert "±" not in (tmp_path / "t.md").read_text().split("Ours:")[0]
    assert {row["train_error_sd"] for row in csv_records(tmp_path / "t.csv")} == {""}


def test_table1_writers(tmp_path: Path) -> None:
    table = build_table1(table_records(tmp_path / "trials"))
    paths = [tmp_path / "out" / name for name in ("table1.csv", "table1.md", "table1.tex")]
    write_table1(table, *paths)

    csv_rows = csv_records(paths[0])
    assert [r["trial"] for r in csv_rows] == load_published()["table1_order"]
    assert float(csv_rows[0]["train_error_mean"]) == table["train_error_mean"].iloc[0]
    mnist = next(r for r in csv_rows if r["trial"] == "mnist_3layer_mlff")
    assert mnist["paper_log_spread"] == "" and mnist["units"] == "% error"

    markdown = paths[1].read_text()
    cells = {row["Trial"]: row for row in markdown_records(paths[1])}
    assert list(cells) == load_published()["table1_order"]
    wine = cells["wine_5layer_mlff"]
    assert [wine[h] for h in ("Data set", "Layer sizes", "Topology", "Units")] == [
        "wine",
        "3-2-2-2",
        "MLFF",
        "% error",
    ]
    assert (wine["Epochs (ours / paper)"], wine["Train (ours)"]) == ("2 / 10", "15.00 ± 1.41")
    assert (wine["Train (paper)"], wine["Train Δ"]) == ("68.00", "-53.00")
    diabetes = cells["diabetes_5layer_mlff"]
    assert (diabetes["Units"], diabetes["Train (ours)"]) == ("mean cost", "0.1100 ± 0.0141")
    assert (diabetes["Train (paper)"], diabetes["Train Δ"]) == ("0.0326", "+0.0774")
    assert cells["mnist_3layer_mlff"]["Log-spread (paper)"] == "–"
    assert markdown.startswith("Table 1 (preset: demo)")

    latex = paths[2].read_text()
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"\midrule" in latex
    assert r"diabetes\_5layer\_mlff" in latex and r"$\pm$" in latex
    assert "_5layer" not in latex.replace(r"\_5layer", "")
    for trial in load_published()["table1_order"]:
        assert trial.replace("_", r"\_") in latex


def test_table1_writers_accept_rows_as_mappings(tmp_path: Path) -> None:
    table = build_table1(table_records(tmp_path / "trials"))
    as_frame = [tmp_path / "frame" / f"t.{ext}" for ext in ("csv", "md", "tex")]
    as_rows = [tmp_path / "rows" / f"t.{ext}" for ext in ("csv", "md", "tex")]
    write_table1(table, *as_frame)
    write_table1(table.to_dict("records"), *as_rows)
    for frame_path, rows_path in zip(as_frame, as_rows, strict=True):
        assert frame_path.read_text() == rows_path.read_text()
    with pytest.raises(ValueError, match="lacks the column.*paper_test_error.*build_table1"):
        write_table1(table.drop(columns="paper_test_error"), *as_rows)


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
