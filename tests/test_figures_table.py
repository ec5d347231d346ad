"""Figures and Table 1 from synthetic trial folders written with the real record writers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from synthetic_trials import fig2_fig3_records, fig5_records, sweep_records, table_records
from table_files import csv_records, markdown_records

from eqp.outputs import figures
from eqp.outputs.published import load_published, load_published_curves, published_error
from eqp.outputs.table import MissingTrialsError, build_table1, write_table1


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
    curves = load_published_curves()

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
        curve = curves["trials"][row["trial"]]
        for split, mean in (("train", train_mean), ("test", (0.22 + 0.01 * index) * scale)):
            at_epoch = curve[f"{split}_error"][1] * scale  # our runs: 2 epochs
            assert row[f"published_{split}_error_at_epoch"] == at_epoch
            assert row[f"diff_{split}_error"] == pytest.approx(mean - at_epoch)
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
    # wine_5layer_mlff's published run: 68.00% training error at epoch 10, 66.67% at epoch 2
    assert (wine["Train (paper)"], wine["Train (published @ our epoch)"]) == ("68.00", "66.67")
    assert (wine["Train Δ"], wine["Examples (train / test)"]) == ("-51.67", "140 / 20")
    diabetes = cells["diabetes_5layer_mlff"]
    assert (diabetes["Units"], diabetes["Train (ours)"]) == ("mean cost", "0.1100 ± 0.0141")
    assert (diabetes["Train (paper)"], diabetes["Train (published @ our epoch)"]) == (
        "0.0326",
        "0.0328",
    )
    assert (diabetes["Train Δ"], diabetes["Log-spread Δ"]) == ("+0.0772", "-0.485")
    assert cells["mnist_3layer_mlff"]["Log-spread (paper)"] == "–"
    assert cells["mnist_3layer_mlff"]["Examples (train / test)"] == "60000 / 10000"
    assert markdown.startswith("Table 1 (preset: demo; settle: euler)\n")
    assert "Δ = ours − published @ our epoch" in markdown

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


def test_table1_compares_at_our_epoch_and_leaves_unpublished_epochs_missing(
    tmp_path: Path,
) -> None:
    """12 epochs: past the 10 published for diabetes and wine, within MNIST's 100."""
    table = build_table1(table_records(tmp_path / "trials", epochs=12)).set_index("trial")
    for trial in ("diabetes_5layer_mlff", "wine_8layer_swni"):
        row = table.loc[trial]
        assert published_error(trial, 12, "test") is None
        at_epoch = ["published_train_error_at_epoch", "published_test_error_at_epoch"]
        assert row[at_epoch].isna().all()
        assert pd.isna(row["diff_train_error"]) and pd.isna(row["diff_test_error"])
        assert not pd.isna(row["paper_test_error"]) and not pd.isna(row["diff_log_spread"])
    mnist = table.loc["mnist_5layer_swni"]
    assert mnist["published_test_error_at_epoch"] == 100.0 * published_error(
        "mnist_5layer_swni", 12, "test"
    )

    paths = [tmp_path / f"t.{ext}" for ext in ("csv", "md", "tex")]
    write_table1(table.reset_index(), *paths)
    wine_csv = next(r for r in csv_records(paths[0]) if r["trial"] == "wine_8layer_swni")
    for column in ("published_test_error_at_epoch", "diff_test_error", "diff_train_error"):
        assert wine_csv[column] == ""
    assert float(wine_csv["paper_test_error"]) == pytest.approx(56.0)
    wine_md = next(r for r in markdown_records(paths[1]) if r["Trial"] == "wine_8layer_swni")
    assert wine_md["Test (published @ our epoch)"] == "–" and wine_md["Test Δ"] == "–"
    assert wine_md["Test (paper)"] == "56.00"
    assert "0.00" not in (wine_md["Test Δ"], wine_md["Train Δ"])
    assert r"Test $\Delta$" in paths[2].read_text()


def test_table1_seeds_with_different_epoch_counts_have_no_single_published_epoch(
    tmp_path: Path,
) -> None:
    records = table_records(tmp_path / "two", epochs=2)
    records["wine_5layer_mlff"] = [
        *records["wine_5layer_mlff"][:1],
        *table_records(tmp_path / "three", epochs=3)["wine_5layer_mlff"][1:],
    ]
    row = build_table1(records).set_index("trial").loc["wine_5layer_mlff"]
    assert row["epochs_run"] == "2/3"
    assert pd.isna(row["published_test_error_at_epoch"]) and pd.isna(row["diff_test_error"])


def test_table1_names_the_settle_method_and_the_data_used(tmp_path: Path) -> None:
    sor = {"settle": "sor", "settle_tol": 1e-5, "settle_max_steps": 500, "train_examples": 500}
    records = table_records(
        tmp_path / "trials",
        extra_settings=sor,
        extra_summary={"batches_per_epoch": {"train": 25, "test": 10}},
    )
    table = build_table1(records)
    assert set(table["settle"]) == {"sor (tol 1e-05)"}
    assert set(table["train_examples"]) == {500} and set(table["test_examples"]) == {200}
    paths = [tmp_path / f"t.{ext}" for ext in ("csv", "md", "tex")]
    write_table1(table, *paths)
    assert paths[1].read_text().startswith("Table 1 (preset: demo; settle: sor (tol 1e-05))")
    assert paths[2].read_text().startswith("% Table 1, preset: demo; settle: sor (tol 1e-05).")
    assert {r["Examples (train / test)"] for r in markdown_records(paths[1])} == {"500 / 200"}

    # Without recorded batch counts the settings cut the data set: 500 // 20 batches of 20.
    old = build_table1(table_records(tmp_path / "old", extra_settings={"train_examples": 500}))
    mnist = old.set_index("trial").loc["mnist_3layer_mlff"]
    assert (mnist["settle"], mnist["train_examples"], mnist["test_examples"]) == (
        "euler",
        500,
        10000,
    )


def test_table1_rejects_seeds_settled_differently(tmp_path: Path) -> None:
    records = table_records(tmp_path / "euler")
    sor = table_records(tmp_path / "sor", extra_settings={"settle": "sor", "settle_tol": 1e-4})
    records["wine_5layer_swni"] = [records["wine_5layer_swni"][0], sor["wine_5layer_swni"][1]]
    with pytest.raises(ValueError, match=r"wine_5layer_swni disagree on settle.*sor \(tol"):
        build_table1(records)
