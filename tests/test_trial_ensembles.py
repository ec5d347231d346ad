"""Named trials as ensembles (``trial_ensembles``): groups, the DAG, and a real run.

Dry runs use the real workflow/Snakefile in an empty temporary folder; the real run copies the
workflow and trains the three 3-layer MNIST trials of config/tiny.yaml as one job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from workflow_helpers import (
    REPO,
    copy_workflow,
    dry_counts,
    job_counts,
    probe_benchmark_files,
    run_snakemake,
    write_config,
)

from eqp import pipeline
from eqp.config.settings import load_yaml

PAPER_GROUPS = {
    "diabetes_5layer_mlff": ("diabetes_5layer_mlff", "diabetes_5layer_swni"),
    "diabetes_8layer_mlff": ("diabetes_8layer_mlff", "diabetes_8layer_swni"),
    "wine_5layer_mlff": ("wine_5layer_mlff", "wine_5layer_swni"),
    "wine_8layer_mlff": ("wine_8layer_mlff", "wine_8layer_swni"),
    "mnist_3layer_mlff": ("mnist_3layer_mlff", "mnist_3layer_mlffpl", "mnist_3layer_swni"),
    "mnist_5layer_mlff": (
        "mnist_5layer_mlff",
        "mnist_5layer_swni",
        "fmnist_5layer_mlff",
        "fmnist_5layer_swni",
    ),
}
GROUP_RULES = {f"train_trial_ensemble_{group}" for group in PAPER_GROUPS}


def config_with(choice: Any, preset: str = "paper", **changes: Any) -> dict[str, Any]:
    """A preset's config (paper, config = findings, demo, tiny) with ``trial_ensembles`` set
    (left out for None) and top-level ``changes``; an absolute trials_file."""
    config = {**load_yaml(REPO / "config" / f"{preset}.yaml"), **changes}
    config.pop("trial_ensembles", None)
    if choice is not None:
        config["trial_ensembles"] = choice
    if "trials_file" in config:
        config["trials_file"] = str(REPO / config["trials_file"])
    return config


def plan_of(config: dict[str, Any]) -> pipeline.Plan:
    return pipeline.Plan.from_config(config, REPO)


def configfile(tmp_path: Path, config: dict[str, Any], name: str = "config.yaml") -> str:
    return str(write_config(tmp_path / name, config))


# -- groups -----------------------------------------------------------------------------------


def test_on_cuda_the_paper_trials_stack_by_shape_and_epochs_may_differ() -> None:
    plan = plan_of(config_with("auto", device="cuda"))
    assert dict(plan.trial_groups) == PAPER_GROUPS
    assert plan.solo_trials == []
    epochs = [plan.trial_settings(n, 0).epochs for n in PAPER_GROUPS["mnist_3layer_mlff"]]
    assert epochs == [100, 100, 200]


def test_auto_is_off_on_a_cpu_and_false_is_off_everywhere() -> None:
    for choice in (None, "auto", False):
        plan = plan_of(config_with(choice))
        assert plan.trial_groups == {} and len(plan.solo_trials) == 15, choice
    assert plan_of(config_with(False, device="cuda")).trial_groups == {}
    assert dict(plan_of(config_with(True)).trial_groups) == PAPER_GROUPS  # true: any device


def test_trials_that_settle_with_sor_or_differ_in_shape_train_alone() -> None:
    findings = plan_of(config_with("auto", preset="config", device="cuda"))
    small = {g: m for g, m in PAPER_GROUPS.items() if not g.startswith("mnist")}
    assert dict(findings.trial_groups) == small  # MNIST trials settle with sor there
    assert len(findings.solo_trials) == 7
    changed = plan_of(
        config_with(
            "auto", device="cuda", trial_overrides={"mnist_3layer_swni": {"free_iterations": 400}}
        )
    )
    assert changed.trial_groups["mnist_3layer_mlff"] == ("mnist_3layer_mlff", "mnist_3layer_mlffpl")
    assert changed.solo_trials == ["mnist_3layer_swni"]


def test_bad_trial_ensembles_values_are_one_clear_error() -> None:
    with pytest.raises(pipeline.PipelineError, match="trial_ensembles must be auto, true or false"):
        plan_of(config_with("yes"))
    with pytest.raises(pipeline.PipelineError, match="engine is 'dense'.*set engine: fast"):
        plan_of(config_with(True, engine="dense"))
    assert plan_of(config_with("auto", engine="dense", device="cuda")).trial_groups == {}


def test_the_schema_refuses_other_values(tmp_path: Path) -> None:
    proc = run_snakemake(
        "-n", "--configfile", configfile(tmp_path, config_with("sometimes")), cwd=tmp_path
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "trial_ensembles" in output, output[-3000:]


# -- the DAG ----------------------------------------------------------------------------------


def test_one_job_per_group_and_seed_and_no_train_trial(tmp_path: Path) -> None:
    config = configfile(tmp_path, config_with("auto", device="cuda"))
    counts = dry_counts(tmp_path, "--configfile", config, "--config", "seeds=[0,1]")
    assert {rule for rule in counts if rule.startswith("train_trial")} == GROUP_RULES
    assert all(counts[rule] == 2 for rule in GROUP_RULES), counts
    fig2 = dry_counts(tmp_path, "--configfile", config, targets=("figures/fig2.pdf",))
    assert fig2 == {
        "fetch_dataset": 1,
        "train_trial_ensemble_mnist_3layer_mlff": 1,
        "figure": 1,
        "total": 3,
    }


def test_a_group_job_writes_its_trials_folders_and_asks_for_a_gpu(tmp_path: Path) -> None:
    config = config_with("auto", device="cuda")
    proc = run_snakemake(
        "figures/fig2.pdf", "-n", "--configfile", configfile(tmp_path, config), cwd=tmp_path
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    (job,) = [b.split("\n[")[0] for b in output.split("rule train_trial_ensemble_")[1:]]
    plan = plan_of(config)
    outputs = re.search(r"output: (.*)", job).group(1).split(", ")
    assert sorted(outputs) == sorted(plan.trial_group_job("mnist_3layer_mlff", 0).outputs)
    assert "log: logs/trials/ensemble/mnist_3layer_mlff/seed0.log" in job
    assert "benchmark: benchmarks/runs/trials/ensemble/mnist_3layer_mlff/seed0.tsv" in job
    resources = re.search(r"resources: (.*)", job).group(1)
    limits = plan.trial_group_job("mnist_3layer_mlff", 0).resources
    assert "gpu=1" in resources, resources
    assert f"mem_mb={limits['mem_mb']}," in resources and f"runtime={limits['runtime']}," in (
        resources
    ), resources


def test_the_jobs_table_reads_every_group_rules_benchmarks(tmp_path: Path) -> None:
    files = probe_benchmark_files(tmp_path, configfile(tmp_path, config_with(True)))
    assert "train_trial" not in files
    assert {rule for rule in files if rule.startswith("train_trial")} == GROUP_RULES
    assert files["train_trial_ensemble_wine_5layer_mlff"] == [
        "benchmarks/runs/trials/ensemble/wine_5layer_mlff/seed0.tsv"
    ]


# -- a real run -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_group_with_different_epochs_trains_in_one_job_for_real(
    tmp_path: Path, mnist_root: Path
) -> None:
    """config/tiny.yaml with trial_ensembles: true and the SW trial on two epochs: one job
    trains the three 3-layer trials, each folder complete, Figure 2 drawn from them."""
    snakefile = copy_workflow(tmp_path)
    config = config_with(True, preset="tiny", data_dir=str(mnist_root))
    config["trials_file"] = "config/paper.yaml"
    config["trial_overrides"] = {"mnist_3layer_swni": {"epochs": 2}}
    run = ("--configfile", configfile(tmp_path / "config", config, "groups.yaml"))
    proc = run_snakemake(
        "figures/fig2.pdf", "--cores", "2", *run, cwd=tmp_path, snakefile=snakefile
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    counts = job_counts(output)
    assert counts.get("train_trial_ensemble_mnist_3layer_mlff") == 1, counts
    assert "train_trial" not in counts, counts

    plan = pipeline.Plan.from_config(config, tmp_path)
    for name, epochs in zip(PAPER_GROUPS["mnist_3layer_mlff"], (1, 1, 2), strict=True):
        summary = json.loads((tmp_path / plan.trial_folder(name, 0) / "summary.json").read_text())
        assert summary["epochs_run"] == epochs, name
        assert summary["ensemble"]["members"] == 3 and summary["ensemble"]["member_epochs"] == [
            1,
            1,
            2,
        ]
    log = (
        tmp_path / "logs" / "trials" / "ensemble" / "mnist_3layer_mlff" / "seed0.log"
    ).read_text()
    assert "ensemble of 3 trials" in log and "the other 1 go on from epoch 1" in log, log[-3000:]
    assert not list((tmp_path / "results" / "checkpoints").rglob("*.safetensors"))
    assert (tmp_path / "figures" / "fig2.pdf").stat().st_size > 0
    again = run_snakemake("figures/fig2.pdf", "-n", *run, cwd=tmp_path, snakefile=snakefile)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
