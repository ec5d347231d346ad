"""`python -m eqp curves`: several runs of one trial beside the published run, epoch by epoch."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from synthetic_trials import write_trial

from eqp.cli import main
from eqp.outputs.curves import curves_frame, curves_markdown, open_run, parse_ranges
from eqp.outputs.published import load_published_curves
from eqp.outputs.records import RecordError

TRIAL = "wine_5layer_swni"


@pytest.fixture
def two_runs(tmp_path):
    """Two runs of TRIAL: four epochs and three, with known last test errors."""
    first = _wine(tmp_path / "a", TRIAL, 0, epochs=4)
    second = _wine(tmp_path / "b", TRIAL, 1, epochs=3, test_error=0.25)
    return first, second


def _wine(folder, trial, seed, **kwargs):
    return write_trial(folder, trial, seed, dataset="wine", sizes=[13, 4, 4, 4, 3], **kwargs)


def test_each_epoch_sits_beside_the_published_run_and_the_first_run(two_runs):
    first, second = two_runs
    frame, trial, dataset = curves_frame([("a", first), ("b", second)])
    published = load_published_curves()["trials"][TRIAL]
    assert (trial, dataset) == (TRIAL, "wine")
    assert frame.index.tolist() == [1, 2, 3, 4]
    assert frame["test: published"].tolist() == pytest.approx(published["test_error"][:4])
    assert frame["test: a"].tolist() == pytest.approx(first.metrics["test_error"][1:].tolist())
    assert frame.loc[3, "test: b"] == pytest.approx(0.25)
    assert math.isnan(frame.loc[4, "test: b"])  # b stopped at epoch 3

    text = curves_markdown(frame, trial, dataset, ranges=[(1, 2), (3, 4)])
    row3 = next(line for line in text.splitlines() if line.startswith("| 3 |"))
    cells = [c.strip() for c in row3.strip("|").split("|")]
    b_minus_published = 100 * (0.25 - published["test_error"][2])
    b_minus_a = 100 * (0.25 - first.metrics["test_error"][3])
    assert cells[-3:-1] == [
        f"{100 * (first.metrics['test_error'][3] - published['test_error'][2]):+.2f}",
        f"{b_minus_published:+.2f}",
    ]
    assert cells[-1] == f"{b_minus_a:+.2f}"
    assert "| 3–4 |" in text and "(1 epochs)" in text  # b reached one epoch of 3-4
    spread = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert spread.split("|")[2].strip() == "3" and "25.00" in spread


def test_every_nth_epoch_keeps_the_last(two_runs):
    frame, trial, dataset = curves_frame([("a", two_runs[0])])
    rows = [
        line.split("|")[1].strip()
        for line in curves_markdown(frame, trial, dataset, 3).splitlines()
        if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    assert rows == ["1", "4"]


def test_the_command_prints_the_table_and_writes_its_csv_and_figure(two_runs, tmp_path, capsys):
    first, second = two_runs
    out = tmp_path / "curves.csv"
    plot = tmp_path / "curves.png"
    code = main(
        ["curves", str(first.folder), str(second.folder), "--csv", str(out), "--plot", str(plot)]
    )
    assert code == 0
    assert plot.stat().st_size > 0 and plot.with_suffix(".pdf").stat().st_size > 0
    text = capsys.readouterr().out
    assert "`euler, seed 0`, `euler, seed 1`" in text  # labels from settle method and seed
    frame = pd.read_csv(out, index_col="epoch")
    assert frame.columns.tolist()[0] == "train: published" and len(frame) == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label", "only-one"], "1 --label for 2 runs"),
        (["--label", "x", "--label", "x"], "must differ"),
        (["--ranges", "10-3"], "not a range of epochs"),
        (["--every", "0"], "--every 0"),
        (["--trial", "no_such_trial"], "no published per-epoch curve"),
    ],
)
def test_bad_input_gets_one_line(two_runs, capsys, extra, message):
    first, second = two_runs
    assert main(["curves", str(first.folder), str(second.folder), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_runs_of_different_trials_need_the_published_one_named(tmp_path, capsys):
    wine = _wine(tmp_path / "wine", TRIAL, 0, epochs=2)
    other = _wine(tmp_path / "other", "wine_5layer_mlff", 0, epochs=2)
    assert main(["curves", str(wine.folder), str(other.folder)]) == 2
    assert "--trial NAME" in capsys.readouterr().err
    assert main(["curves", str(wine.folder), str(other.folder), "--trial", TRIAL]) == 0


def test_a_path_that_is_no_run_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RecordError, match="neither a trial folder nor a checkpoint"):
        open_run(tmp_path / "notes.txt")
    with pytest.raises(RecordError, match="summary.json"):
        open_run(tmp_path)


def test_ranges_parse():
    assert parse_ranges("1-10, 11-30,31-31") == [(1, 10), (11, 30), (31, 31)]
    with pytest.raises(RecordError):
        parse_ranges("0-5")
