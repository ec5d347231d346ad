"""Shared fixtures: the paper's trials and the published reference numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eqp.config.settings import load_yaml, trials_from_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def paper_trials():
    return trials_from_config(load_yaml(ROOT / "config" / "paper.yaml"))


@pytest.fixture(scope="session")
def published():
    with open(ROOT / "eqp" / "outputs" / "published_runs.json") as handle:
        return json.load(handle)


@pytest.fixture
def native_kernel():
    """The compiled fused kernel: skipped where it is not built, unless EQP_REQUIRE_NATIVE=1
    (as in CI, whose install has a C compiler), where its absence is a failure."""
    from eqp.engines.backends import c_kernel

    reason = c_kernel.unavailable_reason()
    if reason:
        if os.environ.get("EQP_REQUIRE_NATIVE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return c_kernel


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
def test_device() -> str:
    """Where device-aware tests train: 'cpu', or what EQP_TEST_DEVICE names (e.g. cuda).

    Asking for CUDA on a machine without it is a failure, not a silent fall-back to the CPU.
    """
    import torch

    device = os.environ.get("EQP_TEST_DEVICE", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"EQP_TEST_DEVICE={device} but torch.cuda.is_available() is False")
    return device


@pytest.fixture
def cuda_device(test_device) -> str:
    """The CUDA device under test; skipped unless EQP_TEST_DEVICE names one."""
    if not test_device.startswith("cuda"):
        pytest.skip("a CUDA test: run with EQP_TEST_DEVICE=cuda on a machine with a GPU")
    return test_device


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    """MNIST's four files in a fresh data root, obtained as the pipeline obtains them (from the
    folder EQP_TEST_MNIST_DIR names, plain or .gz, on a machine without a network)."""
    from eqp.data.sources import ensure_dataset

    root = tmp_path_factory.mktemp("mnist_root")
    ensure_dataset("mnist", root, user_dir=os.environ.get("EQP_TEST_MNIST_DIR") or None)
    return root
