"""Table 1's three files keep every value of the golden files of the hand-written writers.

``tests/data/table1_golden.{csv,md,tex}`` were written by the hand-written CSV, Markdown and
LaTeX writers of ``eqp/table.py`` (before Table 1 became a pandas DataFrame) from
:func:`synthetic_trials.golden_table_records`; the pandas writers reproduced them (CSV and
LaTeX byte for byte, Markdown up to cell padding).

Since then Table 1 gained columns (settle method, examples per epoch, the published error at
our epoch), its heading line and note say more, and the training and test error Δ changed
meaning: ours − the published run *at our epoch*, no longer ours − the paper's final value.
So the comparison is by column name: every golden column is still there with the same cells
(CSV numbers exactly, as floats; Markdown and LaTeX cells as text; the same alignment), except
the two error Δ columns, which are checked against their new definition instead. Whitespace
padding inside the Markdown table is not compared: pandas pads cells, the old writer did not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_trials import golden_table_records
from table_files import csv_cells, latex_parts, markdown_parts, same_csv_cell

from eqp.outputs.table import DISPLAY_HEADER, TEXT_COLUMNS, build_table1, write_table1

GOLDEN = Path(__file__).resolve().parent / "data"
REDEFINED_CSV = {"diff_train_error", "diff_test_error"}
REDEFINED_DISPLAY = {"Train Δ", "Test Δ"}


def columns(header: list[str], rows: list[list[str]]) -> dict[str, list[str]]:
    return {name: [row[i] for row in rows] for i, name in enumerate(header)}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("golden")
    paths = {ext: root / "out" / f"table1.{ext}" for ext in ("csv", "md", "tex")}
    write_table1(build_table1(golden_table_records(root / "trials")), *paths.values())
    return paths


def test_csv_keeps_every_golden_value(written: dict[str, Path]) -> None:
    ours_cells, golden_cells = csv_cells(written["csv"]), csv_cells(GOLDEN / "table1_golden.csv")
    ours = columns(ours_cells[0], ours_cells[1:])
    golden = columns(golden_cells[0], golden_cells[1:])
    assert [name for name in ours if name in golden] == list(golden), "golden columns reordered"
    assert any("" in cells for cells in golden.values()), "the golden CSV holds empty cells"
    for name in set(golden) - REDEFINED_CSV:
        for row, (mine, theirs) in enumerate(zip(ours[name], golden[name], strict=True)):
            assert same_csv_cell(mine, theirs), (name, row, mine, theirs)
    for split in ("train", "test"):
        for mean, at_epoch, diff in zip(
            ours[f"{split}_error_mean"],
            ours[f"published_{split}_error_at_epoch"],
            ours[f"diff_{split}_error"],
            strict=True,
        ):
            assert float(diff) == float(mean) - float(at_epoch)


def test_markdown_keeps_every_golden_cell(written: dict[str, Path]) -> None:
    other, alignment, rows = markdown_parts(written["md"])
    golden_other, golden_alignment, golden_rows = markdown_parts(GOLDEN / "table1_golden.md")
    ours = columns(rows[0], rows[1:])
    golden = columns(golden_rows[0], golden_rows[1:])
    align = dict(zip(rows[0], alignment, strict=True))
    for name, golden_align in zip(golden_rows[0], golden_alignment, strict=True):
        assert align[name] == golden_align, name
        if name not in REDEFINED_DISPLAY:
            assert ours[name] == golden[name], name
    assert align["Examples (train / test)"] == "left" and align["Test Δ"] == "right"
    assert other[0] == golden_other[0].removesuffix(")") + "; settle: euler)"


def test_latex_keeps_every_golden_cell(written: dict[str, Path]) -> None:
    other, rows = latex_parts(written["tex"])
    golden_other, golden_rows = latex_parts(GOLDEN / "table1_golden.tex")
    ours = columns(rows[0], rows[1:])
    golden = columns(golden_rows[0], golden_rows[1:])
    for name in golden:
        if name not in {r"Train $\Delta$", r"Test $\Delta$"}:
            assert ours[name] == golden[name], name
    text, numbers = TEXT_COLUMNS, len(DISPLAY_HEADER) - TEXT_COLUMNS
    assert other[1:] == [rf"\begin{{tabular}}{{{'l' * text}{'r' * numbers}}}", *golden_other[2:]]
    assert golden_other[1] == r"\begin{tabular}{llllllrrrrrrrrr}"
