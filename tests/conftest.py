"""Shared fixtures: the paper's trials and the published reference numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eqp.settings import load_yaml, trials_from_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def paper_trials():
    return trials_from_config(load_yaml(ROOT / "config" / "paper.yaml"))


@pytest.fixture(scope="session")
def published():
    with open(ROOT / "eqp" / "published_runs.json") as handle:
        return json.load(handle)
