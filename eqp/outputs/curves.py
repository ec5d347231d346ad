"""Several runs of one trial, epoch by epoch, beside the published run.

A final number tells whether a run ends where the paper's did; the per-epoch curves tell when
two runs part, and whether a difference is the solver's (the same seed settled two ways) or
the seed's (one solver, several seeds). A run is read from its finished folder or, while it
trains, from its checkpoint, so a long run can be compared at the epoch it reached.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from eqp.outputs.comparison import SPREAD_EPOCHS, error_text
from eqp.outputs.figures import NETWORK_COLOURS, PUBLISHED_STYLE, save_figure
from eqp.outputs.labels import dataset_name, error_scale
from eqp.outputs.progress import CHECKPOINT_SUFFIX, PartialRecord
from eqp.outputs.published import load_published_curves
from eqp.outputs.records import RecordError, TrialRecord

PUBLISHED = "published"
RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def open_run(path: str | os.PathLike) -> TrialRecord:
    """A finished trial folder, or a running trial's checkpoint file (its epochs so far)."""
    path = Path(path)
    if path.is_dir():
        return TrialRecord.open(path)
    if path.is_file() and path.name.endswith(CHECKPOINT_SUFFIX):
        return PartialRecord.from_checkpoint(path, path.with_name(path.stem))
    raise RecordError(
        f"{path} is neither a trial folder nor a checkpoint file ({CHECKPOINT_SUFFIX}); give "
        "the folder a finished run wrote (--out) or the file a running one saves (--checkpoint)"
    )


def run_labels(records: Sequence[TrialRecord]) -> list[str]:
    """How the runs differ: solver and seed, with the trial where that is not enough, and
    the folder where even that is not."""
    short = []
    for record in records:
        summary = record.summary
        method = (summary.get("settle") or {}).get("method") or summary["settings"].get(
            "settle", "euler"
        )
        short.append(f"{method}, seed {summary['seed']}")
    for labels in (
        short,
        [f"{r.summary['trial']}, {label}" for r, label in zip(records, short, strict=True)],
    ):
        if len(set(labels)) == len(labels):
            return labels
    return [str(record.folder) for record in records]


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """ "1-10,11-30" -> [(1, 10), (11, 30)]; one clear error for anything else."""
    ranges = []
    for part in text.split(","):
        match = RANGE.match(part)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise RecordError(
                f"--ranges: {part.strip()!r} is not a range of epochs like 11-30 (first >= 1, "
                "first <= last); give them comma-separated, e.g. --ranges 1-10,11-30,31-100"
            )
        ranges.append((int(match[1]), int(match[2])))
    return ranges


def curves_frame(
    runs: Sequence[tuple[str, TrialRecord]], trial: str | None = None
) -> tuple[pd.DataFrame, str, str]:
    """Per epoch (from 1), the published run's and each run's training and test errors.

    Columns ``train: <label>`` and ``test: <label>`` for the published run first, then each
    run in order; a run that has not reached an epoch has NaN there. Returns the frame, the
    trial whose published run is the yardstick, and its data set.
    """
    if not runs:
        raise RecordError("give at least one run (a trial folder or a checkpoint)")
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels) or PUBLISHED in labels:
        raise RecordError(
            f"the runs' labels {labels} must differ from each other and from {PUBLISHED!r}; "
            "name them with --label"
        )
    names = sorted({record.summary["trial"] for _, record in runs})
    if trial is None and len(names) > 1:
        raise RecordError(
            f"the runs are of different trials ({', '.join(names)}); say which published run "
            "to compare them with: --trial NAME"
        )
    trial = trial or names[0]
    curves = load_published_curves()["trials"]
    if trial not in curves:
        raise RecordError(
            f"no published per-epoch curve for {trial!r}; the published trials are "
            f"{', '.join(sorted(curves))}"
        )
    published = curves[trial]
    columns: dict[str, pd.Series] = {}
    for kind in ("train", "test"):
        values = [float(v) for v in published[f"{kind}_error"]]
        columns[f"{kind}: {PUBLISHED}"] = pd.Series(values, index=range(1, len(values) + 1))
    for label, record in runs:
        metrics = record.metrics
        epochs = metrics["epoch"]
        trained = epochs >= 1
        for kind in ("train", "test"):
            column = metrics[f"{kind}_error"][trained]
            columns[f"{kind}: {label}"] = pd.Series(column, index=epochs[trained])
    frame = pd.DataFrame(columns)
    order = [f"{kind}: {label}" for kind in ("train", "test") for label in [PUBLISHED, *labels]]
    reached = max(int(record.summary["epochs_run"]) for _, record in runs)
    frame = frame.loc[frame.index <= reached, order]
    frame.index.name = "epoch"
    dataset = runs[0][1].summary["settings"]["dataset"]
    return frame, trial, dataset


def _differences(frame: pd.DataFrame, labels: Sequence[str]) -> dict[str, pd.Series]:
    """Each run's test error minus the published one; with two or more runs, each later run
    minus the first as well (same seed, other solver; or same solver, other seed)."""
    test = {label: frame[f"test: {label}"] for label in [PUBLISHED, *labels]}
    out = {f"test: {label} − {PUBLISHED}": test[label] - test[PUBLISHED] for label in labels}
    for label in labels[1:]:
        out[f"test: {label} − {labels[0]}"] = test[label] - test[labels[0]]
    return out


def curves_markdown(
    frame: pd.DataFrame,
    trial: str,
    dataset: str,
    every: int = 1,
    ranges: Sequence[tuple[int, int]] = (),
) -> str:
    """The per-epoch table (every ``every``-th epoch and the last), then, for ``ranges``,
    the mean differences over those epochs."""
    labels = [c.removeprefix("test: ") for c in frame.columns if c.startswith("test: ")][1:]
    differences = _differences(frame, labels)
    table = pd.concat([frame, pd.DataFrame(differences)], axis=1)
    last = int(frame.index.max())
    shown = [e for e in table.index if (e - 1) % every == 0 or e == last]
    unit = error_scale(dataset)[1]
    lines = [
        f"{trial}, {unit} per epoch: the published run and "
        + ", ".join(f"`{label}`" for label in labels),
        "",
        "| epoch | " + " | ".join(table.columns) + " |",
        "|---:|" + "---:|" * len(table.columns),
    ]
    for epoch in shown:
        row = table.loc[epoch]
        cells = [error_text(float(row[c]), dataset, signed=" − " in c) for c in table.columns]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += ["", _spread_markdown(frame, labels, dataset)]
    if ranges:
        lines += ["", _ranges_markdown(frame, labels, differences, dataset, ranges)]
    return "\n".join(lines) + "\n"


def _range_text(values: pd.Series, dataset: str) -> str:
    return f"{error_text(values.min(), dataset)}–{error_text(values.max(), dataset)}"


def _spread_markdown(frame: pd.DataFrame, labels: Sequence[str], dataset: str) -> str:
    """Each run's last test error and its range over its last ten epochs, beside the
    published run's over the same epochs: a final number is judged against a spread."""
    published = frame[f"test: {PUBLISHED}"]
    lines = [
        f"| run | epochs | test, last | test, its last {SPREAD_EPOCHS} epochs "
        f"| published, same {SPREAD_EPOCHS} epochs |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in labels:
        test = frame[f"test: {label}"].dropna()
        window = test.index[-SPREAD_EPOCHS:]
        same = published.reindex(window).dropna()
        ours = (
            f"{error_text(test[window].min(), dataset)}–{error_text(test[window].max(), dataset)}"
        )
        theirs = (
            f"{error_text(same.min(), dataset)}–{error_text(same.max(), dataset)}"
            if len(same)
            else ""
        )
        lines.append(
            f"| {label} | {int(test.index[-1])} | {error_text(float(test.iloc[-1]), dataset)} "
            f"| {ours} | {theirs} |"
        )
    return "\n".join(lines)


def _ranges_markdown(
    frame: pd.DataFrame,
    labels: Sequence[str],
    differences: dict[str, pd.Series],
    dataset: str,
    ranges: Sequence[tuple[int, int]],
) -> str:
    """Mean of each difference over each range of epochs (training errors too), over the
    epochs both runs reached; the count of those epochs is shown where a range is cut short."""
    train = {
        f"train: {label} − {PUBLISHED}": frame[f"train: {label}"] - frame[f"train: {PUBLISHED}"]
        for label in labels
    }
    columns = {**differences, **train}
    lines = [
        "| epochs | " + " | ".join(f"mean {name}" for name in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for first, last in ranges:
        cells = []
        for series in columns.values():
            part = series.loc[(series.index >= first) & (series.index <= last)].dropna()
            cut = "" if len(part) == last - first + 1 else f" ({len(part)} epochs)"
            cells.append(
                error_text(float(part.mean()), dataset, signed=True) + cut if len(part) else ""
            )
        lines.append(f"| {first}–{last} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_curves_figure(frame: pd.DataFrame, trial: str, dataset: str) -> Figure:
    """Training and test error per epoch: the published run (markers) and each run (lines)."""
    scale, unit = error_scale(dataset)
    labels = [c.removeprefix("test: ") for c in frame.columns if c.startswith("test: ")]
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    for ax, kind in zip(fig.subplots(1, 2, sharey=False), ("train", "test"), strict=True):
        for index, label in enumerate(labels):
            series = frame[f"{kind}: {label}"].dropna()
            style = (
                {"color": "black", **PUBLISHED_STYLE, "ms": 2.5, "label": "published, seed 0"}
                if label == PUBLISHED
                else {
                    "color": NETWORK_COLOURS[(index - 1) % len(NETWORK_COLOURS)],
                    "lw": 1.3,
                    "label": label,
                }
            )
            ax.plot(series.index, scale * series.to_numpy(), **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{'training' if kind == 'train' else 'test'} {unit}")
        ax.grid(True, alpha=0.3)
    fig.axes[1].legend(fontsize=8)
    fig.suptitle(f"{trial} ({dataset_name(dataset)}): runs beside the published run", fontsize=10)
    return fig


def curves_figure(
    frame: pd.DataFrame, trial: str, dataset: str, out: str | os.PathLike
) -> tuple[Path, Path]:
    """:func:`build_curves_figure` written as PDF and PNG (``out``'s stem)."""
    return save_figure(build_curves_figure(frame, trial, dataset), out)
