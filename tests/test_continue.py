"""A finished trial continued to more epochs equals one uninterrupted run, file for file.

The folder keeps its final state (state.safetensors: weights, biases, mask, persistent
particles, the NumPy stream, beta's sign, the epoch and the history) and a run asking for
more epochs of the same trial continues from it: 2 epochs continued to 4 must give every file
of a 4-epoch run bit for bit, timings aside.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from workflow_helpers import REPO, TIMING, comparable

from eqp import cli
from eqp.training.checkpoint import STATE_FILE
from eqp.training.run import run_trial


def _state_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["state"])
    meta["rows"] = [{k: v for k, v in row.items() if not TIMING.search(k)} for row in meta["rows"]]
    return meta


def folder_contents(folder: Path) -> dict:
    """Every file of a trial folder, timings aside (the state's metadata included)."""
    contents = {p.name: comparable(p) for p in sorted(folder.iterdir()) if p.name != STATE_FILE}
    if (folder / STATE_FILE).exists():
        contents[STATE_FILE] = (comparable(folder / STATE_FILE), _state_meta(folder / STATE_FILE))
    return contents


def _quiet(_: str) -> None:
    pass


def _continued_equals_straight(settings, tmp_path: Path, data_root=None) -> dict:
    short = settings.with_overrides({"epochs": 2})
    first = run_trial(short, tmp_path / "continued", data_root, log=_quiet, eval_chunk=2)
    assert first.summary["epochs_run"] == 2
    assert (tmp_path / "continued" / STATE_FILE).is_file()
    lines: list[str] = []
    second = run_trial(settings, tmp_path / "continued", data_root, log=lines.append, eval_chunk=2)
    assert second.resumed_from == 2
    assert "continued from the kept state of the finished run after epoch 2" in lines
    straight = run_trial(settings, tmp_path / "straight", data_root, log=_quiet, eval_chunk=2)
    got, expected = (folder_contents(o.folder) for o in (second, straight))
    assert sorted(got) == sorted(expected)
    assert STATE_FILE in got
    for name in expected:
        assert got[name] == expected[name], name
    return expected


def test_wine_2_epochs_continued_to_4_equal_4(paper_trials, tmp_path):
    settings = paper_trials["wine_5layer_swni"].with_overrides(
        {"epochs": 4, "free_iterations": 200}
    )
    contents = _continued_equals_straight(settings, tmp_path)
    assert contents["summary.json"]["epochs_run"] == 4


@pytest.mark.parametrize("settle", ["euler", "sor"])
def test_tiny_mnist_2_epochs_continued_to_4_equal_4(paper_trials, mnist_root, tmp_path, settle):
    settings = paper_trials["mnist_5layer_swni"].with_overrides(
        {
            "epochs": 4,
            "free_iterations": 100 if settle == "euler" else 500,
            "train_examples": 100,
            "test_examples": 100,
            "settle": settle,
        }
    )
    _continued_equals_straight(settings, tmp_path, mnist_root)


def test_cli_continues_a_finished_folder_with_more_epochs(tmp_path, capsys):
    """`python -m eqp train ... --epochs N` on a finished folder continues it."""
    config = str(REPO / "config" / "paper.yaml")
    common = [
        "train", config, "--trial", "wine_8layer_mlff", "--no-progress",
        "--set", "free_iterations=100", "--set", "weakly_clamped_iterations=6",
    ]  # fmt: skip
    assert cli.main([*common, "--out", str(tmp_path / "a"), "--epochs", "1"]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "a"), "--epochs", "3"]) == 0
    assert "continued from the kept state of the finished run after epoch 1" in (
        capsys.readouterr().err
    )
    assert cli.main([*common, "--out", str(tmp_path / "b"), "--epochs", "3"]) == 0
    assert folder_contents(tmp_path / "a") == folder_contents(tmp_path / "b")


def test_kept_state_of_other_settings_or_more_epochs_is_not_continued(paper_trials, tmp_path):
    settings = paper_trials["wine_5layer_mlff"].with_overrides({"epochs": 2, "free_iterations": 50})
    run_trial(settings, tmp_path / "a", log=_quiet)
    lines: list[str] = []
    other = settings.with_overrides({"epochs": 3, "learning_rate": 0.02})
    outcome = run_trial(other, tmp_path / "a", log=lines.append)
    assert outcome.resumed_from == 0
    assert any("is not continued: it was made with other settings" in line for line in lines)
    fresh = run_trial(other, tmp_path / "b", log=_quiet)
    assert folder_contents(tmp_path / "a") == folder_contents(fresh.folder)

    lines.clear()
    fewer = other.with_overrides({"epochs": 1})
    outcome = run_trial(fewer, tmp_path / "a", log=lines.append)
    assert outcome.resumed_from == 0
    assert any("after epoch 3, beyond the 1 asked" in line for line in lines)
    assert outcome.summary["epochs_run"] == 1


def test_keep_state_false_keeps_none_and_drops_a_stale_one(paper_trials, tmp_path):
    settings = paper_trials["wine_5layer_mlff"].with_overrides({"epochs": 1, "free_iterations": 50})
    run_trial(settings, tmp_path / "a", log=_quiet)
    assert (tmp_path / "a" / STATE_FILE).is_file()
    run_trial(settings, tmp_path / "a", log=_quiet, keep_state=False)
    assert not (tmp_path / "a" / STATE_FILE).exists()
