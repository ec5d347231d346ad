"""Threads: every result is bitwise the same whatever the number of threads."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file

from eqp.outputs import records
from eqp.training.run import run_trial


def _outputs(folder) -> dict:
    """Everything a trial folder holds, except timings and the thread count itself."""
    metrics = records.read_metrics(folder)
    metrics.pop("seconds")
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("seconds", "versions", "threads"):
        summary.pop(key)
    record = records.TrialRecord.open(folder)
    return {
        "metrics": {k: [None if x != x else x for x in v.tolist()] for k, v in metrics.items()},
        "summary": summary,
        "model": {k: v.tolist() for k, v in load_file(folder / "model.safetensors").items()},
        "rates": record.layer_rates.tolist(),
        "mean_dw": record.mean_dw.tolist(),
    }


def _same_for_every_thread_count(settings, tmp_path, data_root=None) -> dict:
    results = {}
    for threads in (1, 2, 3):
        outcome = run_trial(
            settings,
            tmp_path / f"t{threads}",
            data_root,
            threads=threads,
            eval_chunk=4,
            log=lambda _: None,
        )
        assert outcome.summary["threads"] == threads
        results[threads] = _outputs(outcome.folder)
    assert results[1] == results[2]
    assert results[1] == results[3]
    return results[1]


@pytest.mark.parametrize("settle", ["euler", "sor"])
def test_a_small_trial_is_identical_for_1_2_and_3_threads(
    paper_trials, native_kernel, tmp_path, settle
):
    settings = paper_trials["wine_8layer_swni"].with_overrides(
        {"epochs": 2, "free_iterations": 300, "settle": settle}
    )
    _same_for_every_thread_count(settings, tmp_path)


@pytest.mark.parametrize("settle", ["euler", "sor"])
def test_a_tiny_mnist_run_is_identical_for_1_2_and_3_threads(
    paper_trials, native_kernel, mnist_root, tmp_path, settle
):
    """Training batches split their rows across threads; test chunks run strips side by side."""
    settings = paper_trials["mnist_5layer_swni"].with_overrides(
        {
            "epochs": 2,
            "free_iterations": 200 if settle == "euler" else 1000,
            "train_examples": 200,
            "test_examples": 240,
            "settle": settle,
        }
    )
    outputs = _same_for_every_thread_count(settings, tmp_path, mnist_root)
    assert len(outputs["metrics"]["epoch"]) == 3


def test_kernel_reports_whether_it_can_use_threads(native_kernel):
    from eqp.engines.backends import c_kernel

    assert c_kernel.multithreaded() in (True, False)


@pytest.mark.parametrize("settle", ["euler", "sor"])
def test_a_tiny_3layer_mnist_run_is_identical_for_1_2_and_3_threads(
    paper_trials, native_kernel, mnist_root, tmp_path, settle
):
    """The 3-layer shape (784-500-500-500-10, skip connections): the compiled weight update
    splits its connections across the threads too."""
    settings = paper_trials["mnist_3layer_swni"].with_overrides(
        {
            "epochs": 2,
            "free_iterations": 60 if settle == "euler" else 1000,
            "weakly_clamped_iterations": 4,
            "train_examples": 100,
            "test_examples": 40,
            "settle": settle,
        }
    )
    outputs = _same_for_every_thread_count(settings, tmp_path, mnist_root)
    assert len(outputs["metrics"]["epoch"]) == 3
