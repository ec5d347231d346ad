"""The published numbers shipped in the package, and the per-epoch look-ups built on them."""

from __future__ import annotations

import numpy as np
import pytest

from eqp.outputs import published, table
from eqp.outputs.published import (
    load_published,
    load_published_curves,
    published_error,
    published_sweep_error,
    published_trial_epochs,
)


def test_curves_agree_with_the_published_runs_file() -> None:
    """The two shipped files come from the same logs: finals and per-epoch values agree."""
    runs, curves = load_published()["trials"], load_published_curves()["trials"]
    assert set(runs) == set(curves)
    for trial, run in runs.items():
        curve = curves[trial]
        assert len(curve["train_error"]) == len(curve["test_error"]) == curve["epochs"]
        assert run["final"]["epochs_run"] == curve["epochs"] == published_trial_epochs(trial)
        for split in ("train", "test"):
            assert run["final"][f"{split}_error"] == curve[f"{split}_error"][-1]
            if "per_epoch" in run:
                assert run["per_epoch"][f"{split}_error"] == curve[f"{split}_error"]


def test_published_error_per_epoch() -> None:
    curve = load_published_curves()["trials"]["mnist_3layer_swni"]
    assert published_error("mnist_3layer_swni", 1, "test") == curve["test_error"][0]
    assert published_error("mnist_3layer_swni", 271, "train") == curve["train_error"][270]
    assert published_error("mnist_3layer_swni", np.int64(3), "test") == curve["test_error"][2]
    assert published_error("mnist_3layer_swni", 272, "test") is None
    assert published_error("wine_5layer_mlff", 11, "train") is None
    assert published_error("mnist_5layer_sweep", 1, "test") is None


def test_epoch_zero_is_the_published_initial_test_error_where_there_is_one() -> None:
    runs = load_published()["trials"]
    assert (
        published_error("wine_5layer_swni", 0, "test")
        == runs["wine_5layer_swni"]["initial_test_error"]
    )
    assert published_error("wine_5layer_swni", 0, "train") is None
    assert "initial_test_error" not in runs["mnist_3layer_mlff"]
    assert published_error("mnist_3layer_mlff", 0, "test") is None


def test_published_sweep_error() -> None:
    sweep = load_published_curves()["sweep"]
    assert published_sweep_error(0.0, 10, "test") == sweep["0.000000"]["test_error"][9]
    assert published_sweep_error(1e-4, 2, "train") == sweep["0.000100"]["train_error"][1]
    assert published_sweep_error("0.057362", 10, "test") == sweep["0.057362"]["test_error"][9]
    p = float(np.logspace(-4, 0, 30)[21])  # 0.078805: one published epoch
    assert published_sweep_error(p, 1, "test") == sweep["0.078805"]["test_error"][0]
    assert published_sweep_error(p, 2, "test") is None
    assert published_sweep_error(float(np.logspace(-4, 0, 30)[22]), 1, "test") is None
    assert published_sweep_error(0.0, 0, "test") is None
    assert published_sweep_error(0.0, 11, "test") is None


@pytest.mark.parametrize(
    ("epoch", "split", "message"),
    [
        (1, "validation", "split must be one of train, test"),
        (-1, "test", "whole number of finished epochs"),
        (1.5, "test", "whole number of finished epochs"),
        (True, "test", "whole number of finished epochs"),
    ],
)
def test_bad_arguments_are_named(epoch: object, split: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        published_error("wine_5layer_mlff", epoch, split)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        published_sweep_error(0.0, epoch, split)  # type: ignore[arg-type]


def test_loaders_hand_out_copies_and_table_keeps_its_name() -> None:
    curves = load_published_curves()
    curves["trials"]["wine_5layer_mlff"]["test_error"][0] = -1.0
    assert published_error("wine_5layer_mlff", 1, "test") != -1.0
    assert load_published_curves()["trials"]["wine_5layer_mlff"]["test_error"][0] != -1.0
    assert table.load_published is published.load_published
    assert load_published()["sweep"]["base"] == published.sweep_base() == "mnist_5layer_swni"
