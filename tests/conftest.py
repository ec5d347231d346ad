"""Shared fixtures: the paper's trials and the published reference numbers."""

from __future__ import annotations

import json
import os
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


@pytest.fixture
def native_kernel():
    """The compiled fused kernel: skipped where it is not built, unless EQP_REQUIRE_NATIVE=1
    (as in CI, whose install has a C compiler), where its absence is a failure."""
    from eqp import native

    reason = native.unavailable_reason()
    if reason:
        if os.environ.get("EQP_REQUIRE_NATIVE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return native


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node Slurm cluster, started for the session and stopped by PID after.

    Skipped where Slurm is not installed or we are not root, unless EQP_REQUIRE_SLURM=1
    (as in CI), where that is a failure instead of a silent skip.
    """
    from cluster.slurm import slurm_cluster, slurm_installed

    reason = None
    if not slurm_installed():
        reason = "Slurm/munge not installed; run `sudo .ci/install-slurm.sh`"
    elif os.geteuid() != 0:
        reason = "the Slurm test cluster must run as root (SlurmUser=root)"
    if reason:
        if os.environ.get("EQP_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    """MNIST's four files in a fresh data root, obtained as the pipeline obtains them."""
    from eqp.sources import ensure_dataset

    root = tmp_path_factory.mktemp("mnist_root")
    ensure_dataset("mnist", root)
    return root
