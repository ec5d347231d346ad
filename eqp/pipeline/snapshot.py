"""A snapshot of a run, finished or not: small copies of its folders, its figures and Table 1.

For a run of many hours (``config/paper-converged.yaml``) a user wants to see the epochs
finished so far, and the project ships such a snapshot as evidence (``docs/paper-converged/``).
Every folder of the config is taken as it stands: a finished folder as it is, an unfinished
trial from its last checkpoint (:class:`eqp.outputs.progress.PartialRecord`, shown at the epoch it
reached and compared with the published run at that epoch), a folder with neither is left
out. Each is copied small (metrics.csv, summary.json, the per-epoch means of its layer
rates, and the mean |dW| only where Figure 5 draws it), and the figures and the table are
drawn from those copies by the pipeline's own figure and table code.

A run of many hours may span machines that do not keep their files (a later session starts
its unfinished jobs over): ``earlier`` snapshots fill in the folders the run has not reached
again, so that one snapshot shows the whole run so far.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqp.outputs import records
from eqp.outputs.progress import PartialRecord, record_so_far
from eqp.outputs.records import RecordError, TrialRecord
from eqp.pipeline.plan import FIGURES, Plan

log = logging.getLogger(__name__)
SLIM_NOTE = (
    "a small copy for the record: layer_rates.npz holds each epoch's mean rate per pair "
    "(shape epochs x 1 x pairs), not every batch's"
)


def plan_settings(plan: Plan) -> dict[str, dict[str, Any]]:
    """Folder -> resolved settings of every trial and sweep point of a config."""
    found = {
        plan.trial_folder(t, s): plan.trial_settings(t, s).to_dict()
        for t in plan.trials
        for s in plan.seeds
    }
    for label in plan.sweep_points:
        for seed in plan.seeds:
            found[plan.sweep_folder(label, seed)] = plan.sweep_settings(label, seed).to_dict()
    return found


def write_slim(
    record: TrialRecord, dest: Path, with_mean_dw: bool, preset: str | None = None
) -> None:
    """Copy what figures and tables read, small; summary.json last, as in a real folder.
    ``preset`` stands in where the record does not say its own (a checkpoint does not)."""
    dest.mkdir(parents=True, exist_ok=True)
    metrics = record.metrics
    rows = [
        {key: values[i].item() for key, values in metrics.items()}
        for i in range(len(metrics["epoch"]))
    ]
    records.write_metrics(dest, rows)
    rates = np.asarray(record.layer_rates, dtype=np.float64)
    means = rates.mean(axis=1, keepdims=True) if rates.size else rates
    records.atomic_write_npz(
        dest / "layer_rates.npz", rates=means, learning_rates=record.learning_rates
    )
    source = record.folder / "mean_dw.npz"
    target = dest / "mean_dw.npz"
    if with_mean_dw and not isinstance(record, PartialRecord) and source.is_file():
        if not (target.exists() and target.samefile(source)):
            shutil.copyfile(source, target)
    summary = {**record.summary, "snapshot": SLIM_NOTE}
    if summary.get("preset") is None:
        summary["preset"] = preset
    records.atomic_write_json(dest / "summary.json", records.json_safe(summary))


def _epochs(record: TrialRecord) -> int:
    return int(record.summary["epochs_run"])


def _is_partial(record: TrialRecord) -> bool:
    return isinstance(record, PartialRecord) or bool(record.summary.get("partial"))


def latest_record(
    folder: str, root: Path, settings: Mapping[str, Any], earlier: Sequence[Path]
) -> TrialRecord:
    """The run's own record of ``folder`` (finished, or its checkpoint so far), or an earlier
    snapshot's copy where that has trained more epochs; RecordError where none has an epoch."""
    relative = Path(folder).relative_to(root)
    found: list[TrialRecord] = []
    problem = None
    try:
        found.append(record_so_far(folder, root, settings))
    except RecordError as exc:
        problem = exc
    for snapshot in earlier:
        copy = snapshot / "results" / relative
        if (copy / "summary.json").is_file():
            found.append(TrialRecord.open(copy))
    if not found:
        raise problem or RecordError(f"{folder} has no epoch in the run or a snapshot")
    # the most epochs wins; on a tie the run's own record (first) and a finished one
    return max(found, key=lambda record: (_epochs(record), not _is_partial(record)))


def take_snapshot(
    plan: Plan, out: str | Path, earlier: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """Copy every folder of ``plan`` so far to ``out/results``; draw figures and Table 1.

    ``earlier`` are the output folders of earlier snapshots of the same config: a folder
    that one of them holds with more epochs than the run has now is taken from there (the
    copy is read first, so ``out`` may be one of them). Returns what was written: the
    folders (finished and partial), the figures drawn (or why a figure was not), Table 1's
    Markdown file (None while no trial of it has an epoch) and ``comparison.md``, every folder
    beside the published run at the same epoch (:mod:`eqp.outputs.comparison`).
    """
    from eqp.outputs.comparison import comparison_table, write_comparison
    from eqp.outputs.figures import fig2, fig3, fig4, fig5
    from eqp.outputs.table import build_table1, write_table1

    out = Path(out)
    root = Path(plan.results_dir)
    earlier_dirs = [Path(e) for e in earlier]
    missing = [str(e) for e in earlier_dirs if not (e / "results").is_dir()]
    if missing:
        raise RecordError(
            f"{', '.join(missing)}: not a snapshot (no results/ folder inside); give the --out "
            "folder of an earlier `python -m eqp snapshot`"
        )
    copies: dict[str, Path] = {}
    partial = []
    fig5_folders = {f for folders in plan.figure_groups("fig5").values() for f in folders}
    for folder, settings in plan_settings(plan).items():
        try:
            record = latest_record(folder, root, settings, earlier_dirs)
        except RecordError as exc:
            log.info("left out %s: %s", folder, exc)
            continue
        dest = out / "results" / Path(folder).relative_to(root)
        write_slim(record, dest, with_mean_dw=folder in fig5_folders, preset=plan.preset)
        copies[folder] = dest
        if _is_partial(record):
            partial.append(folder)
    drawn: dict[str, str] = {}
    draw = {"fig2": fig2, "fig3": fig3, "fig4": fig4, "fig5": fig5}
    for figure in FIGURES:
        sources = plan.figure_sources(figure)
        if isinstance(sources, Mapping):
            given: Any = {
                label: [copies[f] for f in folders if f in copies]
                for label, folders in sources.items()
            }
            given = {label: folders for label, folders in given.items() if folders}
        else:
            given = [copies[f] for f in sources if f in copies]
        if figure == "fig5" and isinstance(given, Mapping):
            given = {
                label: [f for f in folders if (f / "mean_dw.npz").is_file()]
                for label, folders in given.items()
            }
            given = {label: folders for label, folders in given.items() if folders}
        if not given:
            drawn[figure] = "no folder of it has finished an epoch yet"
            continue
        draw[figure](given, out / f"{figure}.pdf", preset=plan.preset)
        drawn[figure] = f"{out / figure}.pdf/.png"
    groups = {
        name: [TrialRecord.open(copies[f]) for f in folders if f in copies]
        for name, folders in plan.table_groups().items()
    }
    table = None
    if any(groups.values()):
        table = out / "table1.md"
        write_table1(
            build_table1(groups, partial=True), out / "table1.csv", table, out / "table1.tex"
        )
    comparison = None
    if copies:
        seeds = plan.seeds
        sweep = {plan.sweep_folder(label, seed) for label in plan.sweep_points for seed in seeds}
        frame = comparison_table(
            {folder: TrialRecord.open(dest) for folder, dest in copies.items()},
            {folder: "sweep" if folder in sweep else "trial" for folder in copies},
        )
        comparison = out / "comparison.md"
        write_comparison(frame, out / "comparison.csv", comparison)
    return {
        "folders": sorted(copies),
        "partial": sorted(partial),
        "figures": drawn,
        "table": table,
        "comparison": comparison,
    }
