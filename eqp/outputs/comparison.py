"""Each folder of a run beside the published run at the same epoch, and the published spread.

A reproduction is trusted when its numbers sit beside the paper's. One seed of a stochastic
training run is not expected to equal the authors' seed 0, so the yardstick is the published
run's own spread: the range of its test error over the ten epochs up to ours (its last ten
for a finished run of the published length). A number of ours outside that range is flagged
once a run is past its first 2 x 10 epochs (before that the range is the learning itself, as
for the 10-epoch sweep); a run still going is compared at the epoch it reached.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from eqp.config.settings import p_label
from eqp.outputs.published import load_published_curves
from eqp.outputs.records import TrialRecord, atomic_write_text

SPREAD_EPOCHS = 10
COLUMNS = (
    "kind",
    "name",
    "dataset",
    "seed",
    "epochs",
    "epochs_asked",
    "finished",
    "test_error",
    "published_same_epoch",
    "difference",
    "published_epochs",
    "published_final",
    "published_spread_low",
    "published_spread_high",
    "within_spread",
)


def _curve(kind: str, record: TrialRecord) -> list[float] | None:
    curves = load_published_curves()
    if kind == "sweep":
        entry = curves["sweep"].get(p_label(float(record.summary["settings"]["bypass_p"])))
    else:
        entry = curves["trials"].get(record.summary["trial"])
    return None if entry is None else [float(v) for v in entry["test_error"]]


def comparison_row(kind: str, record: TrialRecord) -> dict[str, object]:
    """One folder: our last test error, the published one at that epoch, and (from epoch 20 on)
    whether ours lies in the published run's range over the ten epochs up to that epoch."""
    summary = record.summary
    epochs = int(summary["epochs_run"])
    asked = int(summary["settings"]["epochs"])
    finished = not summary.get("partial") and epochs >= asked
    ours = float(summary["test_error"])
    curve = _curve(kind, record) or []
    same = curve[epochs - 1] if 1 <= epochs <= len(curve) else None
    window = (
        curve[epochs - SPREAD_EPOCHS : epochs] if 2 * SPREAD_EPOCHS <= epochs <= len(curve) else []
    )
    low, high = (min(window), max(window)) if window else (None, None)
    within = None if not window else bool(low <= ours <= high)
    name = p_label(float(summary["settings"]["bypass_p"])) if kind == "sweep" else summary["trial"]
    return {
        "kind": kind,
        "name": name,
        "dataset": summary["settings"]["dataset"],
        "seed": int(summary["seed"]),
        "epochs": epochs,
        "epochs_asked": asked,
        "finished": finished,
        "test_error": ours,
        "published_same_epoch": same,
        "difference": None if same is None else ours - same,
        "published_epochs": len(curve),
        "published_final": curve[-1] if curve else None,
        "published_spread_low": low,
        "published_spread_high": high,
        "within_spread": within,
    }


def comparison_table(records: Mapping[str, TrialRecord], kinds: Mapping[str, str]) -> pd.DataFrame:
    """One row per folder (``kinds``: folder -> "trial" or "sweep"), trials first, then the
    sweep by p; errors are fractions (mean costs for diabetes)."""
    rows = [comparison_row(kinds[folder], record) for folder, record in records.items()]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values(["kind", "name", "seed"], ignore_index=True)


def error_text(value: object, dataset: str, signed: bool = False) -> str:
    """% for classification, the mean cost itself for diabetes ("" where there is none)."""
    if value is None or pd.isna(value):
        return ""
    number = float(value) if dataset == "diabetes" else 100 * float(value)
    digits = 4 if dataset == "diabetes" else 2
    return f"{number:+.{digits}f}" if signed else f"{number:.{digits}f}"


def comparison_markdown(frame: pd.DataFrame) -> str:
    """The table for a person: % test error, ours and published (diabetes: the mean cost)."""
    lines = [
        "| kind | name | seed | epochs | test error, ours | published, same epoch | "
        f"ours − published | published final | published, {SPREAD_EPOCHS} epochs up to ours "
        "| within |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for row in frame.itertuples(index=False):
        epochs = f"{row.epochs} / {row.epochs_asked}" + ("" if row.finished else " (running)")
        data = row.dataset
        low, high = row.published_spread_low, row.published_spread_high
        spread = f"{error_text(low, data)}–{error_text(high, data)}" if not pd.isna(low) else ""
        within = {True: "yes", False: "**no**"}.get(row.within_spread, "")
        cells = [
            error_text(row.test_error, data),
            error_text(row.published_same_epoch, data),
            error_text(row.difference, data, signed=True),
            error_text(row.published_final, data),
        ]
        lines.append(
            f"| {row.kind} | {row.name} | {row.seed} | {epochs} | " + " | ".join(cells) + " "
            f"| {spread} | {within} |"
        )
    notes = "Errors in % (diabetes: the mean cost). Published: the authors' seed-0 runs."
    return "\n".join(lines) + "\n\n" + notes + "\n"


def write_comparison(frame: pd.DataFrame, csv_path: Path, markdown_path: Path) -> None:
    atomic_write_text(csv_path, frame.to_csv(index=False))
    atomic_write_text(markdown_path, comparison_markdown(frame))
