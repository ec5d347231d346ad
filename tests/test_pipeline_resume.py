"""Kill a Snakemake training job mid-run, rerun it, and get the uninterrupted run's outputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from eqp import pipeline, records
from eqp.settings import load_yaml
from eqp.trainer import run_trial

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TRIAL = "wine_5layer_swni"


def _checkpoint_epoch(path: Path) -> int:
    try:
        with safe_open(str(path), framework="np") as handle:
            return json.loads(handle.metadata()["state"])["epoch"]
    except Exception:  # noqa: BLE001 - absent or being replaced: not there yet
        return -1


def _metrics_without_seconds(folder: Path) -> dict[str, list]:
    metrics = records.read_metrics(folder)
    metrics.pop("seconds")
    return {key: value.tolist() for key, value in metrics.items()}


@pytest.mark.slow
def test_killed_job_resumes_to_the_uninterrupted_result(tmp_path):
    root = tmp_path / "work"
    for name in ("workflow", "scripts", "config"):
        shutil.copytree(REPO / name, root / name)
    config = load_yaml(REPO / "config" / "tiny.yaml")
    config["trial_overrides"] = {TRIAL: {"epochs": 6, "free_iterations": 300}}
    configfile = root / "config" / "resume.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = pipeline.Plan.from_config(config, root)
    target = f"{plan.results_dir}/trials/{TRIAL}/seed0/summary.json"
    checkpoint = root / plan.trial_checkpoint(TRIAL, 0)
    # the target first: --configfile takes several values and would swallow it
    command = [str(SNAKEMAKE), target, "--cores", "1", "--configfile", str(configfile)]

    job = subprocess.Popen(
        command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if _checkpoint_epoch(checkpoint) >= 2:
            break
        time.sleep(0.05)
    assert job.poll() is None, "the job finished before it could be killed"
    killed_after = _checkpoint_epoch(checkpoint)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (root / target).exists()

    # what a user does after a kill: release Snakemake's lock, then rerun the incomplete job
    unlock = [str(SNAKEMAKE), "--unlock", "--configfile", str(configfile)]
    subprocess.run(unlock, cwd=root, check=True, capture_output=True)
    rerun = subprocess.run(
        [*command, "--rerun-incomplete"], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    log = (root / "logs" / "trials" / TRIAL / "seed0.log").read_text()
    assert f"resumed from the checkpoint after epoch {killed_after}" in log
    assert not checkpoint.exists()

    # same thread count as the job: BLAS reductions, and so the last bits, depend on it
    uninterrupted = run_trial(
        plan.trial_settings(TRIAL, 0),
        tmp_path / "uninterrupted",
        log=lambda _: None,
        threads=plan.threads_per_job,
    ).folder
    resumed = (root / target).parent
    assert _metrics_without_seconds(resumed) == _metrics_without_seconds(uninterrupted)
    ours = records.TrialRecord.open(resumed)
    theirs = records.TrialRecord.open(uninterrupted)
    assert (ours.layer_rates == theirs.layer_rates).all()
    assert (ours.mean_dw == theirs.mean_dw).all()
