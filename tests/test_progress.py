"""Where a long run is: unfinished jobs listed from checkpoints and logs, figures drawn so far."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from eqp import pipeline
from eqp.cli import main
from eqp.outputs.comparison import comparison_markdown, comparison_table
from eqp.outputs.figures import fig2, fig4
from eqp.outputs.progress import (
    PartialRecord,
    checkpoint_of,
    progress_table,
    read_checkpoint_header,
)
from eqp.outputs.published import load_published_curves, published_error
from eqp.outputs.records import RecordError, TrialRecord
from eqp.pipeline.snapshot import take_snapshot

ROOT = Path(__file__).resolve().parents[1]
TRIAL = "wine_5layer_swni"


def _train(folder: Path, epochs: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "eqp",
        "train",
        str(ROOT / "config" / "paper.yaml"),
        "--trial",
        TRIAL,
        "--out",
        str(folder),
        "--epochs",
        str(epochs),
        "--set",
        "free_iterations=300",
        "--checkpoint",
        str(checkpoint_of(folder, folder.parents[2])),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[Path, Path, int]:
    """A results folder whose Wine trial (200 epochs asked) was SIGKILLed after epoch >= 2."""
    results = tmp_path_factory.mktemp("run") / "results"
    folder = results / "trials" / TRIAL / "seed0"
    checkpoint = checkpoint_of(folder, results)
    process = subprocess.Popen(
        _train(folder, 200), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline, epoch = time.monotonic() + 120, -1
    while time.monotonic() < deadline and process.poll() is None and epoch < 2:
        if checkpoint.exists():
            try:
                epoch = int(read_checkpoint_header(checkpoint)["epoch"])
            except RecordError:
                epoch = -1  # being written this instant
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    epoch = int(read_checkpoint_header(checkpoint)["epoch"])
    assert epoch >= 2 and not (folder / "summary.json").exists()
    return results, folder, epoch


def test_a_killed_runs_checkpoint_is_listed_with_its_epoch_errors_and_time_left(killed_run):
    results, folder, epoch = killed_run
    state = read_checkpoint_header(checkpoint_of(folder, results))
    table = progress_table(results)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["folder"] == f"trials/{TRIAL}/seed0"
    identity = (row["kind"], row["name"], row["seed"], row["source"])
    assert identity == ("trial", TRIAL, 0, "checkpoint")
    assert (row["epoch"], row["epochs"]) == (epoch, 200)
    assert row["test_error"] == state["rows"][-1]["test_error"]
    assert row["train_error"] == state["rows"][-1]["train_error"]
    assert row["seconds_per_epoch"] > 0
    assert row["hours_left"] == pytest.approx((200 - epoch) * row["seconds_per_epoch"] / 3600)


def test_the_runs_command_lists_unfinished_jobs_when_nothing_has_finished(killed_run):
    results, _, epoch = killed_run
    shown = subprocess.run(
        [sys.executable, "-m", "eqp", "runs", str(results)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert shown.returncode == 0, shown.stderr
    assert "Unfinished (1, from checkpoints and logs" in shown.stdout
    line = next(x for x in shown.stdout.splitlines() if x.strip().startswith(f"trials/{TRIAL}"))
    assert f" {epoch} " in line and " 200 " in line


def test_a_job_with_only_a_log_is_listed_from_it(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    log = tmp_path / "logs" / "sweep" / "p0.010000" / "seed1.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "settings: {...}\nepoch 0: test error 0.9\n"
        "epoch 1: train error 0.5, test error 0.4 (30.0 s; free-phase passes per example: ...)\n"
        "epoch 2: train error 0.3, test error 0.25 (34.0 s)\n"
    )
    row = progress_table(results).iloc[0]
    assert (row["kind"], row["name"], row["seed"], row["p"]) == ("sweep", "p0.010000", 1, 0.01)
    assert (row["source"], row["epoch"], row["test_error"]) == ("log", 2, 0.25)
    assert row["seconds_per_epoch"] == 32.0
    assert row["hours_left"] != row["hours_left"]  # this log does not say the total epochs
    log.write_text("settings: {'name': 'x', 'epochs': 10, 'seed': 1}\n" + log.read_text())
    row = progress_table(results).iloc[0]
    assert (row["epochs"], row["hours_left"]) == (10, 8 * 32.0 / 3600)


def test_finished_jobs_are_not_listed(tmp_path):
    results = tmp_path / "results"
    folder = results / "trials" / TRIAL / "seed0"
    subprocess.run(_train(folder, 2), cwd=ROOT, check=True, capture_output=True)
    assert (folder / "summary.json").is_file()
    log = tmp_path / "logs" / "trials" / TRIAL / "seed0.log"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1: train error 0.5, test error 0.4 (3.0 s)\n")
    assert progress_table(results).empty


def test_figures_2_and_4_draw_a_run_at_the_epoch_it_reached(killed_run, tmp_path):
    results, folder, epoch = killed_run
    record = PartialRecord.from_checkpoint(checkpoint_of(folder, results), folder)
    assert record.summary["epochs_run"] == epoch and record.summary["partial"]
    assert record.layer_rates.shape[0] == epoch
    assert record.metrics["epoch"].tolist() == list(range(epoch + 1))
    pdf, png = fig2({TRIAL: [record]}, tmp_path / "fig2.pdf")
    assert pdf.stat().st_size > 0 and png.stat().st_size > 0
    pdf, png = fig4([record], tmp_path / "fig4.pdf")
    assert png.stat().st_size > 0
    with pytest.raises(RecordError, match="not finished"):
        record.mean_dw  # noqa: B018


def test_a_snapshot_copies_finished_and_unfinished_folders_and_draws_table1(killed_run, tmp_path):
    results, folder, epoch = killed_run
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["results_dir"] = str(results)
    plan = pipeline.Plan.from_config(config, ROOT)
    done = take_snapshot(plan, tmp_path / "snap")
    assert done["partial"] == [str(folder)]
    copy = TrialRecord.open(tmp_path / "snap" / "results" / "trials" / TRIAL / "seed0")
    assert copy.summary["epochs_run"] == epoch and copy.summary["partial"]
    assert copy.layer_rates.shape[1] == 1  # per-epoch means only
    assert set(done["figures"]) == {"fig2", "fig3", "fig4", "fig5"}
    table = (tmp_path / "snap" / "table1.csv").read_text()
    assert TRIAL in table and json.dumps(epoch) in table
    row = pd.read_csv(tmp_path / "snap" / "comparison.csv").iloc[0]
    assert (row["name"], row["epochs"], row["finished"]) == (TRIAL, epoch, False)
    assert row["test_error"] == copy.summary["test_error"]
    assert row["published_same_epoch"] == published_error(TRIAL, epoch, "test")
    assert TRIAL in done["comparison"].read_text()


def test_the_snapshot_command_writes_figures_and_table1(killed_run, tmp_path):
    results, _, epoch = killed_run
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["results_dir"] = str(results)
    config["trials_file"] = str(ROOT / "config" / "paper.yaml")
    config_file = tmp_path / "config" / "run.yaml"
    config_file.parent.mkdir()
    config_file.write_text(yaml.safe_dump(config))
    shown = subprocess.run(
        [sys.executable, "-m", "eqp", "snapshot", str(config_file), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert shown.returncode == 0, shown.stderr
    assert "1 folder(s) copied" in shown.stdout and "1 of them unfinished" in shown.stdout
    assert TRIAL in (tmp_path / "o" / "table1.md").read_text()


def test_a_snapshot_takes_folders_from_earlier_snapshots_where_they_have_more_epochs(
    killed_run, tmp_path
):
    """A run that went on on a machine which kept no files: the new machine's results have
    fewer epochs of the trial than the earlier snapshot, which therefore fills it in."""
    results, folder, epoch = killed_run
    config = yaml.safe_load((ROOT / "config" / "tiny.yaml").read_text())
    config["results_dir"] = str(results)
    earlier = tmp_path / "earlier"
    take_snapshot(pipeline.Plan.from_config(config, ROOT), earlier)

    again = tmp_path / "again" / "results"
    config["results_dir"] = str(again)
    plan = pipeline.Plan.from_config(config, ROOT)
    relative = folder.relative_to(results)
    assert take_snapshot(plan, tmp_path / "empty")["folders"] == []
    subprocess.run(_train(again / relative, 1), cwd=ROOT, check=True, capture_output=True)
    done = take_snapshot(plan, tmp_path / "merged", [earlier])
    copy = TrialRecord.open(tmp_path / "merged" / "results" / relative)
    assert (copy.summary["epochs_run"], copy.summary["partial"]) == (epoch, True)
    assert done["partial"] == [str(again / relative)]
    assert json.dumps(epoch) in (tmp_path / "merged" / "table1.csv").read_text()
    # the run overtakes the snapshot once it has more epochs; OUT may be the earlier one
    subprocess.run(_train(again / relative, epoch + 1), cwd=ROOT, check=True, capture_output=True)
    done = take_snapshot(plan, earlier, [earlier])
    copy = TrialRecord.open(earlier / "results" / relative)
    assert copy.summary["epochs_run"] == epoch + 1 and "partial" not in copy.summary
    assert done["partial"] == []
    with pytest.raises(RecordError, match="not a snapshot"):
        take_snapshot(plan, tmp_path / "x", [tmp_path / "no-such-snapshot"])


def test_a_checkpoint_before_its_first_trained_epoch_is_not_drawn(tmp_path):
    """Only the evaluation before training (epoch 0) is in it: no rates, nothing to draw."""
    import numpy as np
    from safetensors.numpy import save_file

    state = {"epoch": 0, "rows": [{"epoch": 0, "test_error": 0.9, "seconds": 1.0}]}
    checkpoint = tmp_path / "seed0.safetensors"
    save_file({"weights": np.zeros(1, np.float32)}, checkpoint, {"state": json.dumps(state)})
    with pytest.raises(RecordError, match="no trained epoch yet"):
        PartialRecord.from_checkpoint(checkpoint, tmp_path / "seed0")


def _summary_folder(folder: Path, **summary) -> TrialRecord:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return TrialRecord.open(folder)


def test_a_final_number_is_flagged_outside_the_published_runs_last_ten_epochs(tmp_path):
    curve = load_published_curves()["trials"]["mnist_5layer_swni"]["test_error"]
    low, high = min(curve[-10:]), max(curve[-10:])
    settings = {"dataset": "mnist", "epochs": 100, "bypass_p": 0.07}
    inside, outside = (
        _summary_folder(
            tmp_path / name,
            trial="mnist_5layer_swni",
            seed=0,
            epochs_run=100,
            settings=settings,
            test_error=value,
        )
        for name, value in (("in", (low + high) / 2), ("out", high + 0.01))
    )
    sweep = _summary_folder(
        tmp_path / "p",
        trial="mnist_5layer_swni",
        seed=0,
        epochs_run=3,
        partial=True,
        settings={"dataset": "mnist", "epochs": 10, "bypass_p": 0.0},
        test_error=0.5,
    )
    frame = comparison_table(
        {"a": inside, "b": outside, "c": sweep}, {"a": "trial", "b": "trial", "c": "sweep"}
    )
    trials = frame[frame["kind"] == "trial"]
    assert trials["within_spread"].tolist() == [True, False]
    assert trials["published_same_epoch"].tolist() == [curve[99], curve[99]]
    assert (trials["published_spread_low"].iloc[0], trials["published_spread_high"].iloc[0]) == (
        low,
        high,
    )
    point = frame[frame["kind"] == "sweep"].iloc[0]
    published = load_published_curves()["sweep"]["0.000000"]["test_error"]
    assert (point["name"], point["finished"]) == ("0.000000", False)
    assert point["published_same_epoch"] == published[2]
    assert pd.isna(point["within_spread"])  # 3 epochs: the range would be the learning itself
    text = comparison_markdown(frame)
    assert "**no**" in text and "3 / 10 (running)" in text


def test_curves_compare_a_running_trial_from_its_checkpoint(killed_run, capsys):
    results, folder, epoch = killed_run
    checkpoint = checkpoint_of(folder, results)
    assert main(["curves", str(checkpoint), "--label", "killed"]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(line.split("|")[1]) for line in rows] == list(range(1, epoch + 1))
    record = PartialRecord.from_checkpoint(checkpoint, folder)
    assert f"{100 * record.summary['test_error']:.2f}" in rows[-1]
