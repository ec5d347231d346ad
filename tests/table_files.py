"""Reading Table 1's CSV, Markdown and LaTeX files back into cells, for the table tests."""

from __future__ import annotations

import csv
import re
from pathlib import Path


def csv_cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def same_csv_cell(ours: str, golden: str) -> bool:
    try:
        return float(ours) == float(golden)
    except ValueError:
        return ours == golden


def markdown_parts(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """The lines outside the table, each column's alignment, and the header and body cells."""
    lines = path.read_text(encoding="utf-8").split("\n")
    table = [line for line in lines if line.startswith("|")]
    other = [line for line in lines if not line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]
    rule = rows.pop(1)
    assert all(re.fullmatch(r":?-{3,}:?", cell) for cell in rule), rule
    alignment = ["right" if cell.endswith(":") else "left" for cell in rule]
    return other, alignment, rows


def latex_parts(path: Path) -> tuple[list[str], list[list[str]]]:
    """The lines that are not table rows (comment, tabular, rules) and the cells of each row."""
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    rows = [line for line in lines if line.endswith(r"\\")]
    other = [line for line in lines if not line.endswith(r"\\")]
    cells = [[cell.strip() for cell in row.removesuffix(r"\\").split(" & ")] for row in rows]
    return other, cells


def markdown_records(path: Path) -> list[dict[str, str]]:
    """The Markdown table's body rows, each as header -> cell."""
    _, _, rows = markdown_parts(path)
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def csv_records(path: Path) -> list[dict[str, str]]:
    """The CSV's rows as column -> raw cell text."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
