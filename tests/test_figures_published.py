"""Figures 2 and 4 draw the shipped published curves beside ours, at our epochs; every figure
names its preset, settle method and data. Checked on the matplotlib Figure objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from synthetic_trials import fig2_fig3_records, fig5_records, sweep_records, write_trial

from eqp.outputs import figures
from eqp.outputs.published import load_published, load_published_curves

SOR_SUBSET = {
    "extra_settings": {
        "settle": "sor",
        "settle_tol": 1e-5,
        "settle_max_steps": 400,
        "train_examples": 500,
        "test_examples": 200,
    },
    "extra_summary": {"batches_per_epoch": {"train": 25, "test": 10}},
}


def lines(fig: Figure, gid: str) -> list[Line2D]:
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == gid]


def xy(fig: Figure, gid: str) -> tuple[np.ndarray, np.ndarray]:
    """The x and y data of every line with this gid, joined."""
    found = lines(fig, gid)
    assert found, f"no line {gid!r} in the figure"
    x = np.concatenate([np.asarray(line.get_xdata(), dtype=float) for line in found])
    y = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in found])
    return x, y


def legend_texts(fig: Figure) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    return [text.get_text() for legend in legends if legend is not None for text in legend.texts]


def test_fig2_draws_the_published_runs_at_our_epochs(tmp_path: Path) -> None:
    records = fig2_fig3_records(tmp_path, seeds=2, epochs=3)
    fig = figures.build_fig2(records, "demo")
    curves = load_published_curves()["trials"]
    for trial in records:
        for split in ("train", "test"):
            x, y = xy(fig, f"published:{trial}:{split}")
            # MNIST runs published no error before training: epochs 1..3 only.
            assert x.tolist() == [1.0, 2.0, 3.0]
            assert y.tolist() == [v * 100.0 for v in curves[trial][f"{split}_error"][:3]]
            assert lines(fig, f"ours:{trial}:{split}")
            # The published runs went on for 100 or 271 epochs: drawn whole beside ours.
            full_x, full_y = xy(fig, f"published-full:{trial}:{split}")
            assert full_x.size == curves[trial]["epochs"] == len(full_y)
    ours, published = (
        lines(fig, "ours:mnist_3layer_swni:test")[0],
        lines(fig, "published:mnist_3layer_swni:test")[0],
    )
    assert ours.get_color() == published.get_color()
    assert published.get_marker() == "o" and ours.get_marker() in ("None", None, "")
    texts = legend_texts(fig)
    assert "published, seed 0: training" in texts and "published, seed 0: test" in texts
    assert "ours: test" in texts
    # Our axis spans our three epochs, not the published hundreds.
    assert fig.axes[0].get_xlim()[1] < 4
    assert fig.get_suptitle().startswith(
        "Fig. 2: MNIST error rate per epoch, ours and the published"
    )


def test_fig2_epoch_zero_and_a_run_longer_than_the_published_one(tmp_path: Path) -> None:
    """wine_5layer_swni published its initial test error and 10 epochs; ours ran 12."""
    record = write_trial(tmp_path / "w", "wine_5layer_swni", 0, dataset="wine", epochs=12)
    fig = figures.build_fig2({"wine_5layer_swni": [record]}, "demo")
    curve = load_published_curves()["trials"]["wine_5layer_swni"]
    initial = load_published()["trials"]["wine_5layer_swni"]["initial_test_error"]
    x, y = xy(fig, "published:wine_5layer_swni:test")
    assert x.tolist() == list(range(11))
    assert y.tolist() == [v * 100.0 for v in [initial, *curve["test_error"]]]
    x, _ = xy(fig, "published:wine_5layer_swni:train")
    assert x.tolist() == list(range(1, 11))
    assert not lines(fig, "published-full:wine_5layer_swni:test"), "nothing longer to show"


def test_fig2_without_a_published_run_draws_ours_only(tmp_path: Path) -> None:
    record = write_trial(tmp_path / "x", "my_own_trial", 0, epochs=2)
    fig = figures.build_fig2({"my_own_trial": [record]}, "demo")
    assert lines(fig, "ours:my_own_trial:test")
    assert not any(str(line.get_gid()).startswith("published") for line in fig.axes[0].lines)
    assert not any(text.startswith("published") for text in legend_texts(fig))


@pytest.mark.parametrize("epochs", [1, 2])
def test_fig4_draws_the_published_sweep_at_our_epoch(tmp_path: Path, epochs: int) -> None:
    sweep = sweep_records(tmp_path, epochs=epochs)
    # and the one point published for a single epoch only
    sweep.append(
        write_trial(
            tmp_path / "p0.078805",
            "mnist_5layer_swni",
            0,
            network_type="SW_no_intra",
            p=float(np.logspace(-4, 0, 30)[21]),
            epochs=epochs,
        )
    )
    fig = figures.build_fig4(sweep, "demo")
    published = load_published_curves()["sweep"]
    ps = sorted({figures._sweep_p(record) for record in sweep})
    zero_x = min(p for p in ps if p > 0) / 10
    for split in ("train", "test"):
        x, y = xy(fig, f"published:sweep:{split}")
        drawn = {float(px): float(py) for px, py in zip(x, y, strict=True) if np.isfinite(py)}
        expected = {
            (p if p > 0 else zero_x): published[f"{p:.6f}"][f"{split}_error"][epochs - 1] * 100.0
            for p in ps
            if f"{p:.6f}" in published and published[f"{p:.6f}"]["epochs"] >= epochs
        }
        assert drawn == expected
        assert len(drawn) == (9 if epochs == 1 else 8)
        assert (~np.isfinite(y)).sum() == len(ps) - len(drawn) and 0.0 not in y
    texts = legend_texts(fig)
    assert "test error, published, seed 0" in texts and "test error, ours" in texts
    assert f"{len(drawn)} of {len(ps)} p at our epoch" in fig.get_suptitle()


def test_fig4_unpublished_points_are_absent_not_zero(tmp_path: Path) -> None:
    sweep = sweep_records(tmp_path, epochs=11)  # the published sweep ran 10 epochs
    fig = figures.build_fig4(sweep, "demo")
    assert not lines(fig, "published:sweep:test")
    assert "published sweep (seed 0): 0 of 11 p at our epoch" in fig.get_suptitle()


def test_fig4_of_another_base_has_no_published_overlay(tmp_path: Path) -> None:
    fig = figures.build_fig4(sweep_records(tmp_path, trial="mnist_3layer_swni"), "demo")
    assert not lines(fig, "published:sweep:test")
    assert "no published sweep of this base (it swept mnist_5layer_swni)" in fig.get_suptitle()


def test_fig4_seeds_with_different_epochs_at_one_p_show_no_published_point(
    tmp_path: Path,
) -> None:
    sweep = sweep_records(tmp_path / "a", epochs=2)
    other = sweep_records(tmp_path / "b", epochs=3)
    fig = figures.build_fig4([*sweep, other[1]], "demo")  # p = 1e-4: seeds ran 2 and 3 epochs
    x, y = xy(fig, "published:sweep:test")
    assert not np.isfinite(y[x == pytest.approx(1e-4)]).any()
    assert "2/3 epoch(s)" in fig.get_suptitle()


def test_every_figure_names_preset_settle_and_data(tmp_path: Path) -> None:
    trials = fig2_fig3_records(tmp_path / "t", seeds=1, epochs=2, **SOR_SUBSET)
    built = [
        figures.build_fig2(trials, "demo"),
        figures.build_fig3(trials, "demo"),
        figures.build_fig4(sweep_records(tmp_path / "s", epochs=2, **SOR_SUBSET), "demo"),
        figures.build_fig5(fig5_records(tmp_path / "f", epochs=2, **SOR_SUBSET), "demo"),
    ]
    for fig in built:
        title = fig.get_suptitle()
        assert "preset: demo; settle: sor (tol 1e-05); MNIST: 500 train / 200 test" in title
    euler = fig2_fig3_records(tmp_path / "e", seeds=1, epochs=2)
    assert "settle: euler; MNIST: 60000 train / 10000 test examples" in (
        figures.build_fig2(euler, None).get_suptitle()
    )
