"""Table 1: final errors and log-spread of every named trial, beside the paper's numbers.

The table reads only trial folders (through :mod:`eqp.outputs.records`) and the published numbers
shipped with the package (:mod:`eqp.outputs.published`). Several seeds of one trial are summarised
as mean and *sample* standard deviation (``ddof=1``); a single seed shows its value alone. Errors
are percentages for classification data sets and mean costs for diabetes (a regression task), in the
CSV as well, so that a CSV column never mixes units silently: its ``units`` column says which.

Beside the paper's final values (its Table 1, after the published number of epochs) stands the
same published run's error *after as many epochs as ours ran*, so that a short run is compared
like with like: the error differences are taken against that value, and are missing where the
published run has no such epoch (never against the final value instead).

The table is a :class:`pandas.DataFrame` with one row per trial; pandas writes its CSV (raw
numbers), and a frame of display strings gives the Markdown and LaTeX versions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from eqp.outputs.labels import (
    error_scale,
    examples_used,
    joined,
    settle_label,
    topology_label,
)
from eqp.outputs.published import load_published, published_error
from eqp.outputs.records import TrialRecord, atomic_write_text

TABLE1_FIELDS = (
    "trial",
    "dataset",
    "layer_sizes",
    "topology",
    "units",
    "preset",
    "n_seeds",
    "seeds",
    "settle",
    "train_examples",
    "test_examples",
    "epochs_run",
    "paper_epochs_run",
    "train_error_mean",
    "train_error_sd",
    "paper_train_error",
    "published_train_error_at_epoch",
    "diff_train_error",
    "test_error_mean",
    "test_error_sd",
    "paper_test_error",
    "published_test_error_at_epoch",
    "diff_test_error",
    "log_spread_mean",
    "log_spread_sd",
    "paper_log_spread",
    "diff_log_spread",
)
FLOAT_FIELDS = tuple(
    field for field in TABLE1_FIELDS if field.endswith(("_mean", "_sd")) or "error" in field
) + ("paper_log_spread", "diff_log_spread")
INTEGER_FIELDS = ("n_seeds", "train_examples", "test_examples")


class MissingTrialsError(LookupError):
    """Table 1 needs a trial for which no finished folder was given."""


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); no sd for a single value."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 1:
        return float(array[0]), None
    return float(array.mean()), float(array.std(ddof=1))


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else float(value) * factor


def _difference(ours: float | None, paper: float | None) -> float | None:
    return None if ours is None or paper is None else ours - paper


def _same_everywhere(
    summaries: Sequence[Mapping[str, Any]],
    trial: str,
    key: str,
    read: Callable[[Mapping[str, Any]], Any] | None = None,
) -> Any:
    """The one value of ``key`` that every seed's folder shares; an error naming the trial and
    the values where seeds disagree (they would not be seeds of one trial)."""
    values = [s["settings"][key] if read is None else read(s) for s in summaries]
    distinct = {json.dumps(value) for value in values}
    if len(distinct) != 1:
        raise ValueError(f"the folders given for {trial} disagree on {key}: {sorted(distinct)}")
    return values[0]


def _row(trial: str, records: Sequence[TrialRecord], published: Mapping[str, Any]) -> dict:
    summaries = [record.summary for record in records]
    for record, summary in zip(records, summaries, strict=True):
        if summary.get("trial", trial) != trial:
            raise ValueError(f"{record.folder} holds trial {summary['trial']!r}, not {trial!r}")
    dataset = _same_everywhere(summaries, trial, "dataset")
    layer_sizes = _same_everywhere(summaries, trial, "layer_sizes")
    _same_everywhere(summaries, trial, "network_type")
    settle = _same_everywhere(summaries, trial, "settle", lambda s: settle_label(s["settings"]))
    train_examples, test_examples = _same_everywhere(
        summaries, trial, "examples per epoch", lambda s: list(examples_used(s))
    )
    factor, units = error_scale(dataset)
    final = published["trials"][trial]["final"]
    epochs = sorted({int(s["epochs_run"]) for s in summaries})

    row: dict[str, Any] = {
        "trial": trial,
        "dataset": dataset,
        "layer_sizes": "-".join(str(size) for size in layer_sizes),
        "topology": topology_label(summaries[0]["settings"]),
        "units": units,
        "preset": joined((s.get("preset", "?") for s in summaries), "/"),
        "n_seeds": len(summaries),
        "seeds": " ".join(str(s["seed"]) for s in sorted(summaries, key=lambda s: s["seed"])),
        "settle": settle,
        "train_examples": train_examples,
        "test_examples": test_examples,
        "epochs_run": "/".join(str(e) for e in epochs),
        "paper_epochs_run": final.get("epochs_run"),
    }
    for quantity, scale in (("train_error", factor), ("test_error", factor), ("log_spread", 1.0)):
        values = [np.nan if s[quantity] is None else float(s[quantity]) for s in summaries]
        mean, sd = _mean_sd([v * scale for v in values])
        paper = _scaled(final.get(quantity), scale)
        row[f"{quantity}_mean"] = mean
        row[f"{quantity}_sd"] = sd
        row[f"paper_{quantity}"] = paper
        if quantity == "log_spread":
            row["diff_log_spread"] = _difference(mean, paper)
            continue
        split = quantity.removesuffix("_error")
        # Seeds that ran different epoch counts have no single epoch to compare at.
        at_epoch = published_error(trial, epochs[0], split) if len(epochs) == 1 else None
        row[f"published_{quantity}_at_epoch"] = _scaled(at_epoch, scale)
        row[f"diff_{quantity}"] = _difference(mean, row[f"published_{quantity}_at_epoch"])
    return row


def build_table1(
    records: Mapping[str, Sequence[TrialRecord]],
    paper: Mapping[str, Any] | None = None,
    partial: bool = False,
) -> pd.DataFrame:
    """One row per Table 1 trial, in the paper's order, with our mean ± sd beside the paper's.

    ``records`` maps a trial name to the finished folders of its seeds. Every trial of the
    paper's table must be present; extra trials (e.g. mnist_3layer_mlffpl) are ignored.
    ``paper`` replaces the shipped ``published_runs.json`` (its order and final values); the
    per-epoch values always come from the shipped curves. Missing values are NaN. With
    ``partial`` (a snapshot of a run still going) the trials not given are left out instead.
    """
    published = load_published() if paper is None else paper
    order = list(published["table1_order"])
    missing = [trial for trial in order if not records.get(trial)]
    if partial:
        order = [trial for trial in order if trial not in missing]
    elif missing:
        raise MissingTrialsError(
            f"Table 1 needs finished folders for {len(missing)} trial(s) that were not given: "
            + ", ".join(missing)
        )
    return table1_frame([_row(trial, list(records[trial]), published) for trial in order])


def table1_frame(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Table 1 as a frame with its columns in order and typed: floats (NaN where missing),
    counts as integers, the paper's epoch count as a nullable integer."""
    frame = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    absent = [field for field in TABLE1_FIELDS if field not in frame.columns]
    if absent:
        raise ValueError(
            f"a Table 1 frame lacks the column(s) {', '.join(absent)}; build it with build_table1"
        )
    frame = frame.loc[:, list(TABLE1_FIELDS)]
    types = {field: "float64" for field in FLOAT_FIELDS}
    integers = {field: "int64" for field in INTEGER_FIELDS}
    return frame.astype({**types, **integers, "paper_epochs_run": "Int64"})


def _decimals(units: str) -> int:
    return 2 if units == "% error" else 4


def _number(value: Any, decimals: int, signed: bool = False) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _mean_pm_sd(mean: float, sd: float, decimals: int, pm: str) -> str:
    if pd.isna(sd):
        return _number(mean, decimals)
    return f"{_number(mean, decimals)}{pm}{_number(sd, decimals)}"


def _display_cells(row: Mapping[str, Any], pm: str) -> list[str]:
    """The human-readable cells of one row (Markdown and LaTeX share them)."""
    error_decimals = _decimals(row["units"])
    paper_epochs = "–" if pd.isna(row["paper_epochs_run"]) else row["paper_epochs_run"]
    cells = [
        row["trial"],
        row["dataset"],
        row["layer_sizes"],
        row["topology"],
        row["units"],
        f"{row['train_examples']} / {row['test_examples']}",
        f"{row['epochs_run']} / {paper_epochs}",
    ]
    for quantity, decimals in (
        ("train_error", error_decimals),
        ("test_error", error_decimals),
        ("log_spread", 3),
    ):
        cells += [
            _mean_pm_sd(row[f"{quantity}_mean"], row[f"{quantity}_sd"], decimals, pm),
            _number(row[f"paper_{quantity}"], decimals),
        ]
        if quantity != "log_spread":
            cells.append(_number(row[f"published_{quantity}_at_epoch"], decimals))
        cells.append(_number(row[f"diff_{quantity}"], decimals, signed=True))
    return cells


DISPLAY_HEADER = (
    "Trial",
    "Data set",
    "Layer sizes",
    "Topology",
    "Units",
    "Examples (train / test)",
    "Epochs (ours / paper)",
    "Train (ours)",
    "Train (paper)",
    "Train (published @ our epoch)",
    "Train Δ",
    "Test (ours)",
    "Test (paper)",
    "Test (published @ our epoch)",
    "Test Δ",
    "Log-spread (ours)",
    "Log-spread (paper)",
    "Log-spread Δ",
)
TEXT_COLUMNS = 7  # the leading display columns that are text (left-aligned); numbers follow

NOTE = (
    "Ours: mean ± sample standard deviation (ddof=1) over seeds; one seed shows its value alone. "
    "Examples: training / test examples per epoch. "
    "Paper: the final values of the published seed-0 runs (the paper's Table 1), after the "
    "epochs in the Epochs column. Published @ our epoch: the same published runs after as many "
    "epochs as ours ran. Train and test Δ = ours − published @ our epoch, so a short run is "
    "compared with the published run at the same point; log-spread Δ = ours − paper (only final "
    "log-spreads were published). Errors are % for classification data sets and mean cost for "
    "diabetes; – marks a value that was not published (or, for ours, does not exist)."
)


def display_frame(table: pd.DataFrame, pm: str = " ± ") -> pd.DataFrame:
    """The table as display strings under the reader-facing headers; '–' marks a missing value."""
    cells = [_display_cells(row, pm) for row in table.to_dict("records")]
    return pd.DataFrame(cells, columns=list(DISPLAY_HEADER), dtype=str)


def _heading(table: pd.DataFrame) -> str:
    """What produced the numbers: e.g. 'preset: demo; settle: euler'."""
    return f"preset: {joined(table['preset'])}; settle: {joined(table['settle'])}"


def table1_csv_text(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> str:
    """Raw numbers at full precision; empty cells where a value does not exist."""
    return table1_frame(rows).to_csv(index=False, lineterminator="\n", na_rep="")


def table1_markdown_text(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> str:
    table = table1_frame(rows)
    alignment = ["left"] * TEXT_COLUMNS + ["right"] * (len(DISPLAY_HEADER) - TEXT_COLUMNS)
    body = display_frame(table).to_markdown(
        index=False, tablefmt="pipe", colalign=alignment, disable_numparse=True
    )
    return "\n".join([f"Table 1 ({_heading(table)})", "", body, "", NOTE, ""])


_LATEX_SPECIALS = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "_": r"\_",
        "%": r"\%",
        "&": r"\&",
        "#": r"\#",
        "$": r"\$",
        "{": r"\{",
        "}": r"\}",
        "Δ": r"$\Delta$",
        "±": r"$\pm$",
        "−": r"$-$",
        "–": "--",
    }
)


def latex_escape(text: str) -> str:
    """LaTeX's special characters escaped, and the table's Unicode symbols as math."""
    return str(text).translate(_LATEX_SPECIALS)


def table1_latex_text(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); no float, so callers choose one."""
    table = table1_frame(rows)
    styler = display_frame(table, pm="±").style.hide(axis="index")
    styler = styler.format(latex_escape).format_index(latex_escape, axis=1)
    tabular = styler.to_latex(
        column_format="l" * TEXT_COLUMNS + "r" * (len(DISPLAY_HEADER) - TEXT_COLUMNS),
        hrules=True,
    )
    return f"% Table 1, {_heading(table)}. {latex_escape(NOTE)}\n{tabular}"


def write_table1(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    tex_path: str | os.PathLike,
) -> None:
    """Write the CSV (raw numbers), Markdown and LaTeX versions, each atomically.

    ``rows`` is the frame of :func:`build_table1` (or its rows as mappings)."""
    table = table1_frame(rows)
    atomic_write_text(csv_path, table1_csv_text(table))
    atomic_write_text(md_path, table1_markdown_text(table))
    atomic_write_text(tex_path, table1_latex_text(table))
