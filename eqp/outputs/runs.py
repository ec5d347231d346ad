"""The runs index: one row per finished trial or sweep folder, read from its summary.json.

The pipeline's ``results/runs.tsv`` and ``python -m eqp runs RESULTS_DIR`` are built here
alike, so a folder trained outside the pipeline (``python -m eqp train --out ...``) shows up
the same way. The job table of the report (runtime and memory of every job) is read from
Snakemake's ``benchmark:`` files here too.

Errors are the values summary.json stores: fractions for classification, mean costs for
diabetes; ``paper_*`` columns hold the published run's final values in the same units.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eqp.outputs.records import RecordError, TrialRecord, atomic_write_text

# Settings shown in columns of their own; every other setting is shown where rows differ.
OWN_COLUMNS = ("name", "seed", "bypass_p")
LEADING = ("folder", "kind", "name", "seed", "p", "realised_p")
TRAILING = (
    "settle",
    "engine",
    "engine_layout",
    "kernel_instruction_set",
    "threads",
    "epochs_run",
    "train_error",
    "test_error",
    "log_spread",
    "seconds_per_epoch",
    "paper_epochs_run",
    "paper_train_error",
    "paper_test_error",
    "paper_log_spread",
)
INTEGER_COLUMNS = ("seed", "threads", "epochs_run", "paper_epochs_run")
FLOAT_COLUMNS = (
    "p",
    "realised_p",
    "train_error",
    "test_error",
    "log_spread",
    "seconds_per_epoch",
    "paper_train_error",
    "paper_test_error",
    "paper_log_spread",
)


def find_run_folders(results_dir: str | os.PathLike) -> list[Path]:
    """Every folder under ``results_dir`` holding a summary.json: trials first, then sweeps."""
    root = Path(results_dir)
    if not root.is_dir():
        raise RecordError(
            f"{root} is not a folder; give the results folder (the pipeline's is 'results')"
        )
    folders = [path.parent for path in root.rglob("summary.json")]
    if not folders:
        raise RecordError(
            f"no finished run under {root}: no folder there holds a summary.json (train one "
            "with `python -m eqp train ... --out FOLDER`, or run the pipeline)"
        )
    return sorted(folders, key=lambda f: (_kind(f.relative_to(root)) == "sweep", f.as_posix()))


def _kind(relative: Path) -> str:
    """'sweep' for the pipeline's sweep points (results/sweep/p.../seed...), else 'trial'."""
    return "sweep" if "sweep" in relative.parts else "trial"


def _summary(record: TrialRecord) -> dict[str, Any]:
    try:
        return record.summary
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(
            f"{record.folder / 'summary.json'} is not valid JSON ({exc}); rerun its trial or "
            "remove the folder"
        ) from exc


def _seconds_per_epoch(record: TrialRecord) -> float:
    """Mean wall time of the training epochs (epoch 0, the first evaluation, left out)."""
    metrics = record.metrics
    trained = metrics["epoch"] >= 1
    return float(metrics["seconds"][trained].mean()) if trained.any() else float("nan")


def _settle_method(summary: Mapping[str, Any]) -> str:
    settle = summary.get("settle")
    if isinstance(settle, Mapping) and settle.get("method"):
        return str(settle["method"])
    return str(summary.get("settings", {}).get("settle", "euler"))


def _shown(key: str, value: Any) -> Any:
    """A settings value as one TSV cell: lists joined, like Table 1's layer sizes."""
    if isinstance(value, (list, tuple)):
        return ("-" if key == "layer_sizes" else ",").join(str(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def _row(
    folder: Path, base: Path | None, published: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fixed columns of one folder's row, and its settings (for the varying columns)."""
    record = TrialRecord.open(folder)
    summary = _summary(record)
    settings = dict(summary.get("settings") or {})
    relative = folder
    if base is not None and folder.is_relative_to(base):
        relative = folder.relative_to(base)
    kind = _kind(relative)
    name = str(summary.get("trial", folder.name))
    row: dict[str, Any] = {
        "folder": relative.as_posix(),
        "kind": kind,
        "name": name,
        "seed": summary.get("seed", settings.get("seed")),
        "p": settings.get("bypass_p"),
        "realised_p": summary.get("realised_p"),
        "settle": _settle_method(summary),
        "engine": summary.get("engine"),
        "engine_layout": summary.get("engine_layout"),
        "kernel_instruction_set": summary.get("kernel_instruction_set"),
        "threads": summary.get("threads"),
        "epochs_run": summary.get("epochs_run"),
        "train_error": summary.get("train_error"),
        "test_error": summary.get("test_error"),
        "log_spread": summary.get("log_spread"),
        "seconds_per_epoch": _seconds_per_epoch(record),
    }
    # A sweep point is the base trial at another p and epoch count: no published run.
    final = published.get("trials", {}).get(name, {}).get("final") if kind == "trial" else None
    for key in ("epochs_run", "train_error", "test_error", "log_spread"):
        row[f"paper_{key}"] = (final or {}).get(key)
    # Settings that have a fixed column already (settle) are not repeated.
    shown = {*OWN_COLUMNS, *LEADING, *TRAILING}
    varying = {key: value for key, value in settings.items() if key not in shown}
    varying["preset"] = summary.get("preset")
    return row, varying


def runs_table(
    folders: Sequence[str | os.PathLike],
    base: str | os.PathLike | None = None,
    published: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per folder, in the order given; folder paths relative to ``base`` when inside.

    Beside the fixed columns (name, seed, p, settle method, engine layout, threads, epochs,
    errors, log-spread, seconds per epoch, published values) it shows every setting whose
    value differs between rows.
    """
    if published is None:
        from eqp.outputs.published import load_published

        published = load_published()
    base_path = Path(base) if base is not None else None
    rows, settings = [], []
    for folder in folders:
        row, options = _row(Path(folder), base_path, published)
        rows.append(row)
        settings.append(options)
    frame = pd.DataFrame(rows, columns=[*LEADING, *TRAILING])
    options = pd.DataFrame(settings)
    if not options.empty:
        spelled = options.map(lambda v: json.dumps(v, sort_keys=True, default=str))
        differing = [key for key in options.columns if spelled[key].nunique() > 1]
        varying = pd.DataFrame({key: [_shown(key, v) for v in options[key]] for key in differing})
        frame = pd.concat([frame[list(LEADING)], varying, frame[list(TRAILING)]], axis=1)
    for column in INTEGER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame


def display_text(frame: pd.DataFrame) -> str:
    """A table for a terminal: aligned columns, six significant digits, blanks for missing."""
    shown = frame.copy()
    for column in shown.columns:
        if not pd.api.types.is_float_dtype(shown[column]):
            values = shown[column].astype(object)
            shown[column] = values.where(values.notna(), "")
    return shown.to_string(index=False, na_rep="")


def tsv_text(frame: pd.DataFrame) -> str:
    """A table as TSV, floats written to round-trip exactly, empty cells for missing values."""
    return frame.to_csv(sep="\t", index=False, na_rep="", lineterminator="\n")


def write_runs_index(
    folders: Sequence[str | os.PathLike], out: str | os.PathLike, base: str | os.PathLike
) -> None:
    """``results/runs.tsv``: the runs index of the pipeline's folders, written atomically."""
    atomic_write_text(out, tsv_text(runs_table(folders, base)))


def job_benchmarks(files: Mapping[str, Sequence[str | os.PathLike]]) -> pd.DataFrame:
    """Runtime and memory of every job from its Snakemake benchmark file, one row per job.

    ``files`` maps a rule to its jobs' benchmark files; a job is named by its file's path
    below the folder all of them share. A missing file (a job that did not run in this
    working directory, e.g. a fetch whose data were already there) is logged and left out.
    """
    paths = [Path(path) for group in files.values() for path in group]
    root = Path(os.path.commonpath(paths)) if len(paths) > 1 else Path(".")
    frames, missing = [], []
    for rule, group in files.items():
        for path in map(Path, group):
            if not path.is_file():
                missing.append(str(path))
                continue
            job = path.relative_to(root).with_suffix("").as_posix()
            frames.append(pd.read_csv(path, sep="\t").assign(rule=rule, job=job))
    if missing:
        logging.getLogger(__name__).info(
            "no benchmark file for %d job(s), left out: %s", len(missing), ", ".join(missing)
        )
    if not frames:
        return pd.DataFrame(columns=["rule", "job"])
    frame = pd.concat(frames, ignore_index=True)
    first = ["rule", "job"]
    return frame[first + [c for c in frame.columns if c not in first]]


def write_job_benchmarks(files: Mapping[str, Sequence[str | os.PathLike]], out: str) -> None:
    """``results/jobs.tsv``: :func:`job_benchmarks` written atomically."""
    atomic_write_text(out, tsv_text(job_benchmarks(files)))
