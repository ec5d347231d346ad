"""Table 1's three files reproduce the golden files of the hand-written writers.

``tests/data/table1_golden.{csv,md,tex}`` were written by the hand-written CSV, Markdown and
LaTeX writers of ``eqp/table.py`` (before Table 1 became a pandas DataFrame) from
:func:`synthetic_trials.golden_table_records`. The comparison is by content: CSV numbers
exactly (as floats, so that ``0.1`` and ``0.10`` would agree but no rounding would), every
Markdown and LaTeX cell as text, each column's alignment, the LaTeX column format and rules,
and the lines around the table. Whitespace padding inside the Markdown table is not compared:
pandas pads cells to the column width, the old writer did not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_trials import golden_table_records
from table_files import csv_cells, latex_parts, markdown_parts, same_csv_cell

from eqp.table import build_table1, write_table1

GOLDEN = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("golden")
    paths = {ext: root / "out" / f"table1.{ext}" for ext in ("csv", "md", "tex")}
    write_table1(build_table1(golden_table_records(root / "trials")), *paths.values())
    return paths


def test_csv_matches_the_golden_file(written: dict[str, Path]) -> None:
    ours, golden = csv_cells(written["csv"]), csv_cells(GOLDEN / "table1_golden.csv")
    assert ours[0] == golden[0]
    assert len(ours) == len(golden)
    for row, (our_row, golden_row) in enumerate(zip(ours[1:], golden[1:], strict=True), 1):
        for column, our_cell, golden_cell in zip(golden[0], our_row, golden_row, strict=True):
            assert same_csv_cell(our_cell, golden_cell), (row, column, our_cell, golden_cell)
    empty = [cell == "" for row in golden[1:] for cell in row]
    assert any(empty), "the golden CSV should hold missing values, as empty cells"


def test_markdown_matches_the_golden_file(written: dict[str, Path]) -> None:
    ours = markdown_parts(written["md"])
    golden = markdown_parts(GOLDEN / "table1_golden.md")
    assert ours[0] == golden[0]
    assert ours[1] == golden[1]
    assert ours[2] == golden[2]


def test_latex_matches_the_golden_file(written: dict[str, Path]) -> None:
    ours, golden = latex_parts(written["tex"]), latex_parts(GOLDEN / "table1_golden.tex")
    assert ours[0] == golden[0]
    assert ours[1] == golden[1]
