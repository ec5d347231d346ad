"""The paper's published numbers, shipped inside the package so that figures and Table 1 can
compare with them offline.

``published_runs.json`` holds the authors' settings and final numbers of every named trial;
``published_curves.json`` holds the per-epoch training and test errors of their seed-0 runs and
of the Figure 4 sweep, read from the log files of the authors' repository. Epoch numbers count
finished training epochs: epoch 1 is after the first. Errors are fractions for classification
data sets and mean costs for diabetes, as in a trial folder's ``summary.json``.

A value that was not published (an epoch past the end of a run, a sweep point without a log,
the training error before training) is ``None``, never zero, so that callers show it as missing.
"""

from __future__ import annotations

import json
import numbers
from functools import cache
from importlib import resources
from typing import Any

from eqp.config.settings import p_label

SPLITS = ("train", "test")


@cache
def _text(name: str) -> str:
    return resources.files("eqp.outputs").joinpath(name).read_text(encoding="utf-8")


@cache
def _curves() -> dict[str, Any]:
    """Parsed once; only read here, never handed out (callers get their own copy)."""
    return json.loads(_text("published_curves.json"))


@cache
def _initial_test_errors() -> dict[str, float]:
    trials = load_published()["trials"]
    return {
        trial: float(entry["initial_test_error"])
        for trial, entry in trials.items()
        if entry.get("initial_test_error") is not None
    }


def load_published() -> dict[str, Any]:
    """The paper's published settings and final numbers (a fresh copy the caller may change)."""
    return json.loads(_text("published_runs.json"))


def published_trials_config() -> dict[str, Any]:
    """A config holding the 15 named trials at their published settings (as
    ``config/paper.yaml`` does), for an installed package that has no config folder."""
    trials = load_published()["trials"]
    return {
        "trials": {
            name: {key: value for key, value in entry["settings"].items() if value is not None}
            for name, entry in trials.items()
        }
    }


def load_published_curves() -> dict[str, Any]:
    """The published per-epoch curves, ``trials`` and ``sweep`` (a fresh copy)."""
    return json.loads(_text("published_curves.json"))


def _checked(epoch: int, split: str) -> tuple[int, str]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(
            f"epoch must be a whole number of finished epochs (0 = before training), not {epoch!r}"
        )
    return int(epoch), f"{split}_error"


def _at_epoch(curve: dict[str, Any] | None, epoch: int, key: str) -> float | None:
    if curve is None or not 1 <= epoch <= len(curve[key]):
        return None
    return float(curve[key][epoch - 1])


def published_error(trial: str, epoch: int, split: str) -> float | None:
    """The published seed-0 run's error of ``trial`` after ``epoch`` epochs, or None.

    Epoch 0 is the untrained network: only its test error was published, and only for some
    trials. A trial the paper did not run (e.g. a sweep point) has no curve: None.
    """
    epoch, key = _checked(epoch, split)
    if epoch == 0:
        return _initial_test_errors().get(trial) if split == "test" else None
    return _at_epoch(_curves()["trials"].get(trial), epoch, key)


def published_trial_epochs(trial: str) -> int:
    """How many epochs the published run of ``trial`` lasted (0 where there is none)."""
    curve = _curves()["trials"].get(trial)
    return 0 if curve is None else len(curve["train_error"])


def sweep_base() -> str:
    """The trial whose rewiring probability the published Figure 4 sweep varied."""
    return str(load_published()["sweep"]["base"])


def published_sweep_error(p: float | str, epoch: int, split: str) -> float | None:
    """The published sweep's error at rewiring probability ``p`` after ``epoch`` epochs, or None.

    ``p`` is a probability or its folder label (``"0.000100"``, six decimals, as the published
    code named the folders). Points past p = 0.057362 were not published, p = 0.078805 has one
    epoch only, and no sweep point published its error before training.
    """
    epoch, key = _checked(epoch, split)
    label = p if isinstance(p, str) else p_label(float(p))
    return _at_epoch(_curves()["sweep"].get(label), epoch, key)
