"""Kill a Snakemake training job mid-run, rerun it, and get the uninterrupted run's outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from workflow_helpers import (
    REPO,
    SNAKEMAKE,
    checkpoint_epoch,
    comparable,
    copy_workflow,
    write_config,
)

from eqp import pipeline
from eqp.config.settings import load_yaml
from eqp.training.run import run_trial

TRIAL = "wine_5layer_swni"


@pytest.mark.slow
def test_killed_job_resumes_to_the_uninterrupted_result(tmp_path):
    root = tmp_path / "work"
    copy_workflow(root)
    config = load_yaml(REPO / "config" / "tiny.yaml")
    # long enough (a few seconds) that the kill lands mid-training, not after it
    config["trial_overrides"] = {TRIAL: {"epochs": 60, "free_iterations": 1000}}
    configfile = write_config(root / "config" / "resume.yaml", config)
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
        if checkpoint_epoch(checkpoint) >= 2:
            break
        time.sleep(0.05)
    assert job.poll() is None, "the job finished before it could be killed"
    killed_after = checkpoint_epoch(checkpoint)
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
    # every file but summary.json, whose preset and timings differ by design
    for name in pipeline.TRIAL_FILES[:-1]:
        assert comparable(resumed / name) == comparable(uninterrupted / name), name
