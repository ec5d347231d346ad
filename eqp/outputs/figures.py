"""Figures 2 to 5 of the paper, drawn from finished trial folders and the published numbers.

Every ``figN`` takes trial folders (paths or :class:`~eqp.outputs.records.TrialRecord`), an
output path and a preset label, and writes a PDF and a PNG with the output's stem, each atomically;
``build_figN`` returns the :class:`matplotlib.figure.Figure` without saving it. Figures are bare
``Figure`` objects on an Agg canvas, so importing this module never switches the caller's pyplot
backend. Each figure names the preset, the settle method and the data that produced it in its
title, because a demo-preset figure must never pass for the paper's.

Figures 2 and 4 draw the published seed-0 runs (shipped in the package,
:mod:`eqp.outputs.published`) beside ours at the same epochs, so that a short run is compared like
with like. Where a label maps to several seeds, lines are the mean over seeds and a light band spans
the seeds' minimum to maximum.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter

from eqp.outputs.labels import data_label, dataset_name, error_scale, joined, settle_label
from eqp.outputs.published import (
    load_published_curves,
    published_error,
    published_sweep_error,
    published_trial_epochs,
    sweep_base,
)
from eqp.outputs.records import TrialRecord, atomic_write_bytes

TrialLike = TrialRecord | str | os.PathLike
Seeds = TrialLike | Sequence[TrialLike]

TRIAL_LABELS = {
    "mnist_3layer_mlff": "MLFF, one global rate",
    "mnist_3layer_mlffpl": "MLFF, per-layer rates",
    "mnist_3layer_swni": "SW, p = 10%",
    "mnist_5layer_mlff": "MLFF",
    "mnist_5layer_swni": "SW, p = 10%",
}
NETWORK_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
SPLIT_STYLES = (("train", "-"), ("test", "--"))
SPLIT_NAMES = {"train": "training", "test": "test"}
PUBLISHED_LABEL = "published, seed 0"
PUBLISHED_STYLE = {"lw": 0.9, "marker": "o", "ms": 4, "mfc": "white", "alpha": 0.9}
PNG_DPI = 150
MATRIX_DPI = 300


def display_label(label: str) -> str:
    """A reader-facing name for a trial name; any other label is shown as given."""
    return TRIAL_LABELS.get(label, label)


def _as_record(item: TrialLike) -> TrialRecord:
    return item if isinstance(item, TrialRecord) else TrialRecord.open(item)


def _as_seeds(item: Seeds) -> list[TrialRecord]:
    """One trial or several seeds of it, as a non-empty list of records."""
    if isinstance(item, (TrialRecord, str, os.PathLike)):
        return [_as_record(item)]
    records = [_as_record(one) for one in item]
    if not records:
        raise ValueError("a figure label was given no trial folders")
    return records


def _preset_text(records: Iterable[TrialRecord], preset: str | None) -> str:
    """The preset to print: the one given, else what the folders' summaries say."""
    if preset is not None:
        return preset
    found = sorted({str(record.summary.get("preset", "unknown")) for record in records})
    return found[0] if len(found) == 1 else "mixed: " + ", ".join(found)


def _run_text(records: Iterable[TrialRecord], preset: str | None) -> str:
    """What produced a figure: preset, settle method and the data used per epoch."""
    records = list(records)
    settle = joined(settle_label(record.summary["settings"]) for record in records)
    data = joined((data_label(record.summary) for record in records), "; ")
    return f"preset: {_preset_text(records, preset)}; settle: {settle}; {data}"


def _trial_name(label: str, seeds: Sequence[TrialRecord]) -> str:
    """The trial a label's folders ran (what the published curves are keyed by)."""
    return str(seeds[0].summary.get("trial", label))


def _epochs_run(record: TrialRecord) -> int:
    return int(record.summary["epochs_run"])


def _seed_note(groups: Mapping[str, Sequence[TrialRecord]]) -> str:
    counts = sorted({len(records) for records in groups.values()})
    if counts == [1]:
        return "one seed per network"
    return f"mean over {'/'.join(map(str, counts))} seeds; band: min–max"


def _padded(series: Sequence[np.ndarray]) -> np.ndarray:
    """Stack 1-D series of possibly different lengths, padding the short ones with NaN."""
    length = max(len(one) for one in series)
    out = np.full((len(series), length), np.nan)
    for row, one in enumerate(series):
        out[row, : len(one)] = one
    return out


def _mean_band(series: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stacked = _padded(series)
    return np.nanmean(stacked, 0), np.nanmin(stacked, 0), np.nanmax(stacked, 0)


def _positive(values: np.ndarray) -> np.ndarray:
    """Values for a log axis: zeros and negatives become gaps rather than fake points."""
    return np.where(values > 0, values, np.nan)


def _network_colour(index: int) -> str:
    return NETWORK_COLOURS[index % len(NETWORK_COLOURS)]


def _pair_colours(n_pairs: int) -> list:
    cmap = colormaps["viridis"]
    return [cmap(0.9 * k / max(n_pairs - 1, 1)) for k in range(n_pairs)]


def _pair_label(k: int) -> str:
    return f"layer {k}→{k + 1}"


def save_figure(fig: Figure, out: str | os.PathLike, dpi: int = PNG_DPI) -> tuple[Path, Path]:
    """Write ``out`` as PDF and PNG beside each other, atomically; return both paths."""
    out = Path(out)
    pdf_path, png_path = out.with_suffix(".pdf"), out.with_suffix(".png")
    FigureCanvasAgg(fig)
    for path, fmt, metadata in (
        (pdf_path, "pdf", {"CreationDate": None}),
        (png_path, "png", None),
    ):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
        atomic_write_bytes(path, buffer.getvalue())
    return pdf_path, png_path


def _epoch_corrections(record: TrialRecord) -> np.ndarray:
    """RMS correction per epoch and pair: learning rate × per-layer rate, batch-averaged."""
    rates = np.asarray(record.layer_rates, dtype=np.float64)
    return rates.mean(axis=1) * np.asarray(record.learning_rates, dtype=np.float64)


def _published_points(trial: str, last_epoch: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs 0..last_epoch at which ``trial``'s published run has a value, and the values."""
    pairs = [(e, published_error(trial, e, split)) for e in range(last_epoch + 1)]
    kept = [(e, value) for e, value in pairs if value is not None]
    return np.array([e for e, _ in kept], dtype=int), np.array([v for _, v in kept], dtype=float)


def build_fig2(records: Mapping[str, Seeds], preset: str | None = None) -> Figure:
    """Error per epoch (epoch 0 = before training) for the three MNIST 3-layer networks.

    Training error is solid and test error dashed, one colour per network, on a log axis
    because the training error of the SW network falls by four decades. The published seed-0
    run of each network is drawn in its colour with open markers over the epochs we ran; where
    the published runs went on longer, a second panel shows them whole, our epochs shaded.
    """
    groups = {label: _as_seeds(item) for label, item in records.items()}
    all_records = [record for seeds in groups.values() for record in seeds]
    trials = {label: _trial_name(label, seeds) for label, seeds in groups.items()}
    our_last = max(_epochs_run(record) for record in all_records)
    longer = any(published_trial_epochs(trial) > our_last for trial in trials.values())

    fig = Figure(figsize=(11.0 if longer else 7.6, 4.8), layout="constrained")
    if longer:
        # Separate y axes: the published runs' late epochs must not squash our short run.
        ax, full_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    else:
        ax, full_ax = fig.subplots(), None
    curves = load_published_curves()["trials"]
    units, drew_published = set(), False
    for index, (label, seeds) in enumerate(groups.items()):
        colour, trial = _network_colour(index), trials[label]
        factor, unit = error_scale(seeds[0].summary["settings"]["dataset"])
        units.add(unit)
        metrics = [seed.metrics for seed in seeds]
        for split, style in SPLIT_STYLES:
            mean, low, high = _mean_band([m[f"{split}_error"] * factor for m in metrics])
            epochs = np.arange(len(mean))
            ax.plot(
                epochs, _positive(mean), style, color=colour, lw=1.4, gid=f"ours:{label}:{split}"
            )
            if len(seeds) > 1:
                ax.fill_between(
                    epochs, _positive(low), _positive(high), color=colour, alpha=0.15, lw=0
                )
            published_epochs, values = _published_points(trial, len(mean) - 1, split)
            if published_epochs.size:
                drew_published = True
                ax.plot(
                    published_epochs,
                    _positive(values * factor),
                    ls=style,
                    color=colour,
                    gid=f"published:{trial}:{split}",
                    **PUBLISHED_STYLE,
                )
            if full_ax is not None and trial in curves:
                whole = np.asarray(curves[trial][f"{split}_error"], dtype=np.float64) * factor
                full_ax.plot(
                    np.arange(1, whole.size + 1),
                    _positive(whole),
                    style,
                    color=colour,
                    lw=0.8,
                    alpha=0.8,
                    gid=f"published-full:{trial}:{split}",
                )
    ax.set_yscale("log")
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("error (%)" if units == {"% error"} else " / ".join(sorted(units)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(_seed_note(groups) + "; zero errors are not drawn on the log axis", fontsize=8)
    for axis in (ax, full_ax):
        if axis is not None:
            axis.grid(True, which="major", alpha=0.3)
    if full_ax is not None:
        full_ax.axvspan(0, our_last, color="0.75", alpha=0.5, lw=0)
        full_ax.set_yscale("log")
        full_ax.set_xlim(left=0)
        full_ax.set_xlabel("epoch")
        full_ax.set_title(f"published runs, all epochs (ours: 0–{our_last}, shaded)", fontsize=8)

    handles = [
        Line2D([], [], color=_network_colour(index), lw=2, label=display_label(label))
        for index, label in enumerate(groups)
    ]
    sources = [("ours", {"lw": 1.4})] + ([(PUBLISHED_LABEL, PUBLISHED_STYLE)] * drew_published)
    handles += [
        Line2D([], [], color="0.2", ls=style, label=f"{name}: {SPLIT_NAMES[split]}", **look)
        for name, look in sources
        for split, style in SPLIT_STYLES
    ]
    fig.legend(handles=handles, fontsize=8, loc="outside right upper")
    datasets = joined(dataset_name(r.summary["settings"]["dataset"]) for r in all_records)
    fig.suptitle(
        f"Fig. 2: {datasets} error rate per epoch, ours and the published runs\n"
        + _run_text(all_records, preset),
        fontsize=10,
    )
    return fig


def fig2(
    records: Mapping[str, Seeds], out: str | os.PathLike, preset: str | None = None
) -> tuple[Path, Path]:
    """Figure 2 (:func:`build_fig2`) written as PDF and PNG."""
    return save_figure(build_fig2(records, preset), out)


def build_fig3(records: Mapping[str, Seeds], preset: str | None = None) -> Figure:
    """RMS correction per adjacent layer pair and epoch, one panel per network.

    The correction is the pair's learning rate times its per-layer rate, averaged over the
    epoch's batches, so that per-layer learning rates show up as the corrections they cause.
    """
    groups = {label: _as_seeds(item) for label, item in records.items()}
    all_records = [record for seeds in groups.values() for record in seeds]
    fig = Figure(figsize=(4.0 * len(groups), 4.0), layout="constrained")
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, (label, seeds) in zip(axes, groups.items(), strict=True):
        corrections = [_epoch_corrections(seed) for seed in seeds]
        n_pairs = corrections[0].shape[1]
        for k, colour in enumerate(_pair_colours(n_pairs)):
            mean, low, high = _mean_band([c[:, k] for c in corrections])
            epochs = np.arange(1, len(mean) + 1)
            ax.plot(epochs, _positive(mean), color=colour, lw=1.4, label=_pair_label(k))
            if len(seeds) > 1:
                ax.fill_between(
                    epochs, _positive(low), _positive(high), color=colour, alpha=0.2, lw=0
                )
        ax.set_yscale("log")
        ax.set_title(display_label(label), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("RMS correction (learning rate × per-layer rate)")
    fig.suptitle(
        f"Fig. 3: per-layer RMS correction, mean over each epoch's batches; {_seed_note(groups)}"
        f"\n{_run_text(all_records, preset)}",
        fontsize=10,
    )
    return fig


def fig3(
    records: Mapping[str, Seeds], out: str | os.PathLike, preset: str | None = None
) -> tuple[Path, Path]:
    """Figure 3 (:func:`build_fig3`) written as PDF and PNG."""
    return save_figure(build_fig3(records, preset), out)


def _sweep_p(record: TrialRecord) -> float:
    """The configured rewiring probability; MLFF has none, which is p = 0."""
    p = record.summary["settings"].get("bypass_p")
    return 0.0 if p is None else float(f"{float(p):.10g}")


def _final_epoch_corrections(record: TrialRecord) -> np.ndarray:
    """Learning rate × mean per-layer rate over all batches of the last epoch run."""
    rates = np.asarray(record.layer_rates, dtype=np.float64)
    last = min(int(record.summary.get("epochs_run", rates.shape[0])), rates.shape[0]) - 1
    return rates[last].mean(axis=0) * np.asarray(record.learning_rates, dtype=np.float64)


def _mark_axis_break(ax: Any, x: float) -> None:
    """Draw '//' across the bottom and top spines at data x, to show the axis is broken."""
    for y in (0.0, 1.0):
        for shift in (0.93, 1.07):
            ax.plot(
                [x * shift],
                [y],
                transform=ax.get_xaxis_transform(),
                marker=[(-0.5, -1), (0.5, 1)],
                markersize=9,
                color="k",
                mew=1,
                linestyle="none",
                clip_on=False,
                zorder=5,
            )


def _p_axis(ax: Any, zero_x: float | None, positive: np.ndarray) -> None:
    """Log x axis of p, with a separate tick '0' left of a break when p = 0 is present."""
    ax.set_xscale("log")
    decades = np.arange(np.floor(np.log10(positive.min())), np.ceil(np.log10(positive.max())) + 1)
    majors = [10.0**d for d in decades]
    minors = [m * 10.0**d for d in decades for m in range(2, 10) if m * 10.0**d <= positive.max()]
    labels = [f"$10^{{{int(d)}}}$" for d in decades]
    if zero_x is not None:
        majors, labels = [zero_x, *majors], ["0", *labels]
    ax.xaxis.set_major_locator(FixedLocator(majors))
    ax.xaxis.set_minor_locator(FixedLocator(minors))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticklabels(labels)
    low = zero_x if zero_x is not None else positive.min()
    ax.set_xlim(low / 10**0.25, positive.max() * 10**0.25)
    if zero_x is not None:
        _mark_axis_break(ax, np.sqrt(zero_x * positive.min()))


def _published_sweep(
    by_p: Mapping[float, Sequence[TrialRecord]], ps: np.ndarray, split: str
) -> np.ndarray:
    """The published sweep's error at each p after as many epochs as our folders ran there;
    NaN where it was not published, or where our seeds at that p ran different epoch counts."""
    values = []
    for p in ps:
        epochs = {_epochs_run(record) for record in by_p[p]}
        value = published_sweep_error(float(p), epochs.pop(), split) if len(epochs) == 1 else None
        values.append(np.nan if value is None else value)
    return np.array(values, dtype=np.float64)


@dataclass(frozen=True)
class _PAxis:
    """Where the sweep's values of p sit on a log axis: p = 0 one decade left of the smallest
    positive p, behind an axis break, and never joined to the positive-p lines."""

    ps: np.ndarray

    @property
    def is_zero(self) -> np.ndarray:
        return self.ps == 0

    @property
    def positive(self) -> np.ndarray:
        return self.ps[~self.is_zero] if (~self.is_zero).any() else np.array([1e-4])

    @property
    def zero_x(self) -> float | None:
        return self.positive.min() / 10.0 if self.is_zero.any() else None

    def draw(self, ax: Any, values: np.ndarray, **style: Any) -> None:
        """Positive p joined by a line; p = 0 as a lone marker of the same style."""
        x = np.where(self.is_zero, self.zero_x if self.zero_x is not None else np.nan, self.ps)
        zero = self.is_zero
        label, line_style = style.pop("label"), style.pop("ls", "-")
        marker, size = style.pop("marker", "o"), style.pop("ms", 3)
        ax.plot(
            x[~zero], values[~zero], ls=line_style, marker=marker, ms=size, label=label, **style
        )
        ax.plot(x[zero], values[zero], ls="none", marker=marker, ms=size + 2, **style)


def build_fig4(sweep: Sequence[TrialLike], preset: str | None = None) -> Figure:
    """Errors, log-spread and per-layer corrections at the end of the sweep, against p.

    p = 0 cannot sit on a log axis, so it is drawn one decade left of the smallest positive p,
    at a tick labelled '0' behind a '//' axis break, and never joined to the positive-p lines.
    Folders sharing a p (several seeds) are averaged. Where the sweep varies the published
    sweep's base trial, the published errors after the same number of epochs are drawn beside
    ours (grey, open squares); points that were not published are absent.
    """
    records = [_as_record(item) for item in sweep]
    if not records:
        raise ValueError("fig4 needs at least one sweep folder")
    by_p: dict[float, list[TrialRecord]] = defaultdict(list)
    for record in records:
        by_p[_sweep_p(record)].append(record)
    axis = _PAxis(np.array(sorted(by_p)))
    factor, unit = error_scale(records[0].summary["settings"]["dataset"])
    epochs_text = joined((_epochs_run(record) for record in records), "/")

    def mean_over_seeds(value: Any) -> np.ndarray:
        return np.array([np.mean([value(r) for r in by_p[p]], axis=0) for p in axis.ps])

    base = sweep_base()
    overlay = {str(record.summary.get("trial")) for record in records} == {base}
    published = {
        split: _published_sweep(by_p, axis.ps, split) * factor
        if overlay
        else np.full(axis.ps.size, np.nan)
        for split, _ in SPLIT_STYLES
    }
    fig = Figure(figsize=(6.8, 7.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    errors = {
        split: mean_over_seeds(lambda r, s=split: r.summary[f"{s}_error"] * factor)
        for split, _ in SPLIT_STYLES
    }
    spread = mean_over_seeds(lambda r: r.number("log_spread"))
    ylabel = (
        f"error after {epochs_text} epoch(s) (%)"
        if unit == "% error"
        else f"{unit} after {epochs_text} epoch(s)"
    )
    shown = _draw_sweep_errors(top, axis, errors, published, spread, ylabel)
    _draw_sweep_corrections(bottom, axis, mean_over_seeds(_final_epoch_corrections))
    for ax in (top, bottom):
        _p_axis(ax, axis.zero_x, axis.positive)

    counts = sorted({len(group) for group in by_p.values()})
    seeds = "one seed per p" if counts == [1] else f"mean over {'/'.join(map(str, counts))} seeds"
    if overlay:
        published_note = f"published sweep (seed 0): {shown} of {len(axis.ps)} p at our epoch"
    else:
        published_note = f"no published sweep of this base (it swept {base})"
    fig.suptitle(
        f"Fig. 4: sweep of p, {len(axis.ps)} values, {epochs_text} epoch(s); {seeds}\n"
        f"{_run_text(records, preset)}\n{published_note}",
        fontsize=10,
    )
    return fig


def _draw_sweep_errors(
    top: Any,
    axis: _PAxis,
    errors: Mapping[str, np.ndarray],
    published: Mapping[str, np.ndarray],
    spread: np.ndarray,
    ylabel: str,
) -> int:
    """Our errors, the published ones where there are some, and the log-spread on a twin
    axis; returns how many p have a published test error."""
    spread_ax = top.twinx()
    axis.draw(
        top,
        errors["train"],
        color="tab:blue",
        ls="-",
        label="training error, ours",
        gid="ours:train",
    )
    axis.draw(
        top, errors["test"], color="tab:blue", ls="--", label="test error, ours", gid="ours:test"
    )
    shown = int(np.isfinite(published["test"]).sum())
    if shown:
        for split, style in SPLIT_STYLES:
            axis.draw(
                top,
                published[split],
                color="0.35",
                ls=style,
                marker="s",
                ms=4,
                mfc="white",
                lw=0.9,
                label=f"{SPLIT_NAMES[split]} error, {PUBLISHED_LABEL}",
                gid=f"published:sweep:{split}",
            )
    axis.draw(spread_ax, spread, color="tab:red", ls="-", label="log-spread")
    top.set_ylabel(ylabel)
    spread_ax.set_ylabel("mean log-spread", color="tab:red")
    spread_ax.tick_params(axis="y", colors="tab:red")
    top.grid(True, which="major", alpha=0.3)
    handles = top.get_legend_handles_labels()[0] + spread_ax.get_legend_handles_labels()[0]
    top.legend(handles=handles, fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return shown


def _draw_sweep_corrections(bottom: Any, axis: _PAxis, corrections: np.ndarray) -> None:
    """Each layer pair's RMS correction in the final epoch, on a log axis."""
    for k, colour in enumerate(_pair_colours(corrections.shape[1])):
        axis.draw(bottom, _positive(corrections[:, k]), color=colour, label=_pair_label(k))
    bottom.set_yscale("log")
    bottom.set_ylabel("RMS correction, final epoch")
    bottom.set_xlabel("rewiring probability p  (0 shown left of the axis break)")
    bottom.grid(True, which="major", alpha=0.3)
    bottom.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))


def fig4(
    sweep: Sequence[TrialLike], out: str | os.PathLike, preset: str | None = None
) -> tuple[Path, Path]:
    """Figure 4 (:func:`build_fig4`) written as PDF and PNG."""
    return save_figure(build_fig4(sweep, preset), out)


def _layer_names(n_layers: int) -> list[str]:
    return ["in", *[f"h{i}" for i in range(1, n_layers - 1)], "out"]


def build_fig5(records: Mapping[str, Seeds], preset: str | None = None) -> Figure:
    """Mean |dW| matrices side by side on one log colour scale; unconnected entries blank.

    Each panel shows one network, the lowest seed given: seeds of an SW network differ in
    topology, so averaging their matrices would smear connections that no network has.
    """
    groups = {label: _as_seeds(item) for label, item in records.items()}
    chosen = {
        label: min(seeds, key=lambda r: int(r.summary.get("seed", 0)))
        for label, seeds in groups.items()
    }
    matrices = {
        label: np.asarray(record.mean_dw, dtype=np.float64) for label, record in chosen.items()
    }
    positive_values = np.concatenate([m[m > 0] for m in matrices.values()])
    if positive_values.size == 0:
        raise ValueError("fig5: every mean |dW| entry is zero; nothing to show on a log scale")
    # Connections from always-blank MNIST border pixels have |dW| near 1e-17; a percentile
    # floor keeps them from washing out the contrast (they are drawn at the floor's colour).
    floor = max(positive_values.min(), np.percentile(positive_values, 1.0))
    norm = LogNorm(vmin=floor, vmax=positive_values.max(), clip=True)
    cmap = colormaps["viridis"].with_extremes(bad="white")

    # at least 8 inches wide: the two-line title does not fit above one panel otherwise
    fig = Figure(figsize=(max(4.6 * len(groups) + 1.4, 8.0), 5.2), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    image = None
    for ax, (label, record) in zip(axes, chosen.items(), strict=True):
        matrix = matrices[label]
        image = ax.imshow(
            np.ma.masked_less_equal(matrix, 0.0), cmap=cmap, norm=norm, interpolation="nearest"
        )
        sizes = record.layer_sizes
        offsets = np.cumsum([0, *sizes])
        for boundary in offsets[1:-1]:
            ax.axhline(boundary - 0.5, color="0.5", lw=0.4)
            ax.axvline(boundary - 0.5, color="0.5", lw=0.4)
        centres = (offsets[:-1] + offsets[1:]) / 2 - 0.5
        names = _layer_names(len(sizes))
        ax.set_xticks(centres, names, rotation=90, fontsize=7)
        ax.set_yticks(centres, names, fontsize=7)
        ax.tick_params(length=0)
        summary = record.summary
        ax.set_title(
            f"{display_label(label)} ({summary.get('trial', label)}, seed {summary.get('seed')})",
            fontsize=9,
        )
        ax.set_xlabel("neuron (grouped by layer)")
    axes[0].set_ylabel("neuron (grouped by layer)")
    fig.colorbar(
        image, ax=list(axes), shrink=0.85, label="mean |dW| per batch (before learning rate)"
    )
    fig.suptitle(
        "Fig. 5: mean correction magnitude per connection; blank = no connection\n"
        + _run_text(chosen.values(), preset),
        fontsize=10,
    )
    return fig


def fig5(
    records: Mapping[str, Seeds], out: str | os.PathLike, preset: str | None = None
) -> tuple[Path, Path]:
    """Figure 5 (:func:`build_fig5`) written as PDF and PNG, the PNG at a higher resolution
    so that single connections stay visible."""
    return save_figure(build_fig5(records, preset), out, dpi=MATRIX_DPI)
