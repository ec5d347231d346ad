"""Start a real single-node Slurm cluster and run jobs and a Snakemake workflow through it.

Needs root plus Slurm and munge (``.ci/install-slurm.sh``); select with ``-m slurm``.
Proof that jobs went through sbatch: every Slurm job writes its own ``$SLURM_JOB_ID``
(only set by slurmd inside an allocation) into its output, and each of those IDs must
have a COMPLETED record in slurmctld's job-completion log whose job name is the Snakemake
run's Slurm run ID (the plugin submits with ``--job-name <run id>``); the local rule must
see no ``SLURM_JOB_ID``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster.slurm import SlurmCluster

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

SNAKEFILE = """\
localrules: all, combine

rule all:
    input: "out/combined.txt"

rule make:
    output: "out/{name}.txt"
    threads: lambda wildcards: 2 if wildcards.name == "b" else 1
    shell:
        "echo {wildcards.name} job=$SLURM_JOB_ID cpus=$SLURM_CPUS_PER_TASK "
        "host=$(hostname -s) > {output}"

rule combine:
    input: expand("out/{name}.txt", name=["a", "b"])
    output: "out/combined.txt"
    shell: "cat {input} > {output} && echo local job=${{SLURM_JOB_ID:-none}} >> {output}"
"""


@pytest.fixture
def cluster(slurm: SlurmCluster) -> SlurmCluster:
    """The session's cluster (see conftest.py: started once, stopped at the end)."""
    return slurm


@pytest.mark.slurm
def test_sbatch_wrap_runs_on_the_node(cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id = cluster.sbatch("--wrap", "hostname -s", "--output", str(tmp_path / "%j.out"))
    record = cluster.wait_for_job(job_id, timeout=60)

    assert record["JobState"] == "COMPLETED", record
    assert record["Partition"] == cluster.partition
    assert record["NodeList"] == cluster.node_name
    assert (tmp_path / f"{job_id}.out").read_text().strip() == cluster.node_name


@pytest.mark.slurm
def test_snakemake_profile_submits_through_sbatch(cluster: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    before = {r["JobId"] for r in cluster.job_records()}
    cmd = [
        str(SNAKEMAKE),
        "--profile", str(PROFILE),
        "--workflow-profile", "none",
        "--directory", str(tmp_path),
        "--snakefile", str(tmp_path / "Snakefile"),
        # No accounting database here, so poll squeue instead of sacct (MinJobAge=300).
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "1",
        "--slurm-keep-successful-logs",
        "--latency-wait", "5",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=cluster.env, capture_output=True, text=True, timeout=150
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed:\n{log}\n{cluster.log_tails()}"
    assert time.monotonic() - start < 150

    outputs = {name: (tmp_path / "out" / f"{name}.txt").read_text() for name in ("a", "b")}
    job_ids = {}
    for name, text in outputs.items():
        match = re.fullmatch(rf"{name} job=(\d+) cpus=(\d+) host=(\S+)\n", text)
        assert match, f"rule make did not run inside a Slurm job: {text!r}"
        job_ids[name] = match.group(1)
        assert match.group(3) == cluster.node_name
    assert outputs["a"].split()[2] == "cpus=1"
    assert outputs["b"].split()[2] == "cpus=2"  # cpus_per_task: threads in the profile
    combined = (tmp_path / "out" / "combined.txt").read_text()
    assert combined.endswith("local job=none\n"), "localrule combine must not go to Slurm"

    run_id = re.search(r"SLURM run ID: (\S+)", log)
    assert run_id, log
    new = [r for r in cluster.job_records() if r["JobId"] not in before]
    assert sorted(r["JobId"] for r in new) == sorted(job_ids.values()), (new, job_ids)
    for record in new:
        assert record["Name"] == run_id.group(1)
        assert record["JobState"] == "COMPLETED"
        assert record["Partition"] == cluster.partition
    for name, job_id in job_ids.items():
        slurm_log = tmp_path / ".snakemake" / "slurm_logs" / "rule_make" / name / f"{job_id}.log"
        assert slurm_log.is_file(), sorted(p for p in tmp_path.rglob("*.log"))
