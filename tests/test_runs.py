"""The runs index (eqp.runs, `python -m eqp runs`) on real trial folders, and the job table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from eqp import cli
from eqp.engines.backends import c_kernel
from eqp.outputs import records, runs
from eqp.training.run import run_trial

QUICK = {"epochs": 1, "free_iterations": 20, "weakly_clamped_iterations": 4}


@pytest.fixture(scope="module")
def results(paper_trials, tmp_path_factory) -> Path:
    """A results folder as the pipeline lays it out, plus one folder trained by hand."""
    root = tmp_path_factory.mktemp("results")
    swni = paper_trials["wine_5layer_swni"]
    jobs = {
        "trials/wine_5layer_swni/seed0": swni.with_overrides(QUICK),
        "trials/wine_5layer_swni/seed1": swni.with_overrides({**QUICK, "seed": 1}),
        "sweep/p0.500000/seed0": swni.with_overrides({**QUICK, "bypass_p": 0.5}),
        "by_hand/wine_mlff": paper_trials["wine_5layer_mlff"].with_overrides(
            {**QUICK, "epochs": 2}
        ),
    }
    for folder, settings in jobs.items():
        run_trial(settings, root / folder, log=lambda _: None, threads=1, preset="demo")
    (root / "checkpoints").mkdir()  # holds no summary.json: not a run
    return root


def test_every_folder_is_found_trials_first(results: Path) -> None:
    found = [f.relative_to(results).as_posix() for f in runs.find_run_folders(results)]
    assert found == [
        "by_hand/wine_mlff",
        "trials/wine_5layer_swni/seed0",
        "trials/wine_5layer_swni/seed1",
        "sweep/p0.500000/seed0",
    ]


def test_index_rows_hold_the_summaries_and_the_published_values(results: Path) -> None:
    table = runs.runs_table(runs.find_run_folders(results), base=results).set_index("folder")
    assert list(table.columns[:5]) == ["kind", "name", "seed", "p", "realised_p"]
    assert list(table.columns[-4:]) == [
        "paper_epochs_run", "paper_train_error", "paper_test_error", "paper_log_spread"
    ]  # fmt: skip
    for folder, row in table.iterrows():
        summary = json.loads((results / folder / "summary.json").read_text())
        assert row["name"] == summary["trial"] and row["seed"] == summary["seed"]
        assert row["test_error"] == summary["test_error"]
        assert row["train_error"] == summary["train_error"]
        assert row["log_spread"] == summary["log_spread"]
        assert row["epochs_run"] == summary["epochs_run"]
        assert row["engine_layout"] == summary["engine_layout"]
        fused = summary["engine_layout"] == "fused"
        assert summary["kernel_instruction_set"] == (c_kernel.instruction_set() if fused else None)
        assert row["kernel_instruction_set"] == summary["kernel_instruction_set"] or not fused
        assert row["realised_p"] == summary["realised_p"]
        metrics = records.read_metrics(results / folder)
        assert row["seconds_per_epoch"] == pytest.approx(metrics["seconds"][1:].mean())
    sweep = table.loc["sweep/p0.500000/seed0"]
    assert sweep["kind"] == "sweep" and sweep["p"] == 0.5
    assert sweep[["paper_test_error", "paper_epochs_run"]].isna().all()
    trial = table.loc["trials/wine_5layer_swni/seed1"]
    assert trial["kind"] == "trial" and trial["seed"] == 1 and trial["p"] == 0.1
    assert trial["paper_test_error"] == 0.28 and trial["paper_epochs_run"] == 10
    assert table.loc["by_hand/wine_mlff", "paper_test_error"] == 0.76
    assert pd.isna(table.loc["by_hand/wine_mlff", "p"])


def test_index_shows_exactly_the_settings_that_differ(results: Path) -> None:
    table = runs.runs_table(runs.find_run_folders(results), base=results)
    fixed = set(runs.LEADING) | set(runs.TRAILING)
    varying = [c for c in table.columns if c not in fixed]
    # MLFF against SW (type, bypass_mag), 2 epochs against 1; seed and p have own columns
    assert varying == ["network_type", "bypass_mag", "epochs"]
    assert table["epochs"].tolist() == [2, 1, 1, 1]
    same = runs.runs_table(
        [results / "trials/wine_5layer_swni/seed0", results / "trials/wine_5layer_swni/seed1"]
    )
    assert not [c for c in same.columns if c not in fixed]  # only the seed differs


def test_fields_newer_summaries_add_are_read_when_present(results: Path, tmp_path: Path) -> None:
    """threads and the settle block are read defensively: absent means unknown / euler."""
    newer = tmp_path / "newer"
    shutil.copytree(results / "trials/wine_5layer_swni/seed0", newer)
    summary = json.loads((newer / "summary.json").read_text())
    summary.pop("threads", None)
    summary.pop("settle", None)
    summary["settings"].pop("settle", None)
    records.atomic_write_json(newer / "summary.json", summary)
    older = runs.runs_table([newer]).iloc[0]
    assert older["settle"] == "euler" and pd.isna(older["threads"])

    summary["threads"] = 4
    summary["settle"] = {"method": "sor", "tol": 1e-5, "max_steps": None}
    summary["settings"]["settle"] = "sor"
    records.atomic_write_json(newer / "summary.json", summary)
    row = runs.runs_table([newer]).iloc[0]
    assert row["settle"] == "sor" and row["threads"] == 4


def test_tsv_round_trips_every_value(results: Path, tmp_path: Path) -> None:
    folders = runs.find_run_folders(results)
    out = tmp_path / "runs.tsv"
    runs.write_runs_index(folders, out, base=results)
    back = pd.read_csv(out, sep="\t")
    table = runs.runs_table(folders, base=results)
    assert back["test_error"].tolist() == table["test_error"].tolist()
    assert back["folder"].tolist() == table["folder"].tolist()
    assert not list(tmp_path.glob(".*.tmp"))


def test_runs_command_prints_the_index(results: Path, capsys) -> None:
    assert cli.main(["runs", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["folder", "kind", "name"]
    assert len(lines) == 1 + 4 and "sweep/p0.500000/seed0" in lines[-1]
    assert cli.main(["runs", str(results), "--tsv"]) == 0
    tsv = capsys.readouterr().out
    assert tsv == runs.tsv_text(runs.runs_table(runs.find_run_folders(results), base=results))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "is not a folder"),
        ("empty", "no finished run under"),
        ("corrupt", "summary.json is not valid JSON"),
    ],
)
def test_runs_command_bad_folder_is_one_line(
    case: str, message: str, results: Path, tmp_path: Path, capsys
) -> None:
    target = tmp_path / case
    if case == "empty":
        target.mkdir()
    elif case == "corrupt":
        shutil.copytree(results / "by_hand", target)
        (target / "wine_mlff" / "summary.json").write_text('{"trial": ')
    assert cli.main(["runs", str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_job_table_reads_every_benchmark_file_there_is(tmp_path: Path) -> None:
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    bench = tmp_path / "benchmarks" / "runs"
    (bench / "trials" / "wine").mkdir(parents=True)
    (bench / "trials" / "wine" / "seed0.tsv").write_text(
        header + "12.5\t0:00:12\t800.1\t3000.2\t350.0\t480.0\t1.2\t0.3\t95.0\t11.9\n"
    )
    (bench / "table1.tsv").write_text(header + "0.8\t0:00:00\t120.0\t900.0\t60\t70\t0\t0\t5\t0.1\n")
    files = {
        "train_trial": [str(bench / "trials/wine/seed0.tsv"), str(bench / "trials/x/seed0.tsv")],
        "table1": [str(bench / "table1.tsv")],
    }
    table = runs.job_benchmarks(files)
    assert table[["rule", "job"]].values.tolist() == [
        ["train_trial", "trials/wine/seed0"], ["table1", "table1"]
    ]  # fmt: skip
    assert table["s"].tolist() == [12.5, 0.8] and table["max_rss"].tolist() == [800.1, 120.0]
    out = tmp_path / "jobs.tsv"
    runs.write_job_benchmarks(files, str(out))
    assert pd.read_csv(out, sep="\t")["job"].tolist() == ["trials/wine/seed0", "table1"]


def test_a_setting_with_a_fixed_column_is_not_repeated(results: Path, tmp_path: Path) -> None:
    """Rows that differ in settle (euler and sor) show it once, in the fixed column."""
    converged = tmp_path / "converged"
    shutil.copytree(results / "trials/wine_5layer_swni/seed0", converged)
    summary = json.loads((converged / "summary.json").read_text())
    summary["settle"] = {"method": "sor", "tol": 1e-5, "max_steps": None}
    summary["settings"]["settle"] = "sor"
    records.atomic_write_json(converged / "summary.json", summary)
    table = runs.runs_table([results / "trials/wine_5layer_swni/seed0", converged])
    assert table.columns.is_unique
    assert table["settle"].tolist() == ["euler", "sor"]
