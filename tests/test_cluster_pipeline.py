"""The pipeline on a real Slurm cluster through profiles/slurm (issue: run on a cluster).

The session's single-node cluster (conftest.py) runs config/tiny.yaml: every training and
sweep job must go through ``sbatch`` (Slurm's job-completion records name exactly those
jobs), while the dataset fetch, the figures and the table stay local rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eqp import pipeline
from eqp.config.settings import load_yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

# What docs/cluster.md ("Running on a cluster") tells a user without Slurm accounting
# to add; the faster polling only shortens the test.
CLUSTER_FLAGS = (
    "--profile", str(REPO / "profiles" / "slurm"),
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "1",
    "--jobs", "4",
)  # fmt: skip


@pytest.mark.slurm
@pytest.mark.slow
def test_tiny_config_runs_every_training_job_through_sbatch(slurm, tmp_path):
    root = tmp_path / "work"
    for name in ("workflow", "scripts", "config"):
        shutil.copytree(REPO / name, root / name)
    config = load_yaml(REPO / "config" / "tiny.yaml")
    config["data_dir"] = str(tmp_path / "datasets")
    configfile = root / "config" / "cluster.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    before = {record["JobId"] for record in slurm.job_records()}

    command = [str(SNAKEMAKE), *CLUSTER_FLAGS, "--configfile", str(configfile)]
    proc = subprocess.run(
        command, cwd=root, env=slurm.env, capture_output=True, text=True, timeout=1200
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:] + "\n" + slurm.log_tails()

    plan = pipeline.Plan.from_config(config, root)
    expected = [root / f for f in plan.all_trial_outputs() + plan.all_sweep_outputs()]
    expected += [root / "figures" / f"fig{n}.{ext}" for n in (2, 3, 4, 5) for ext in ("pdf", "png")]
    expected += [root / "tables" / f"table1.{ext}" for ext in ("csv", "md", "tex")]
    missing = [str(p) for p in expected if not p.is_file() or p.stat().st_size == 0]
    assert not missing, missing

    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", output)
    training_jobs = len(plan.trial_names) * len(plan.seeds) + len(plan.sweep_labels)
    assert len(submitted) == training_jobs, output[-4000:]
    records = [r for r in slurm.job_records() if r["JobId"] not in before]
    assert sorted(r["JobId"] for r in records) == sorted(submitted)
    assert all(r["JobState"] == "COMPLETED" for r in records), records
    assert {r["Partition"] for r in records} == {slurm.partition}
