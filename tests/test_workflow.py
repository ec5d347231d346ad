"""The Snakemake pipeline: config resolution, schema messages, the DAG, and a real tiny run.

Dry runs use the real workflow/Snakefile with ``--directory`` set to an empty temporary
folder, so that results a developer already has in the repository never change the counts.
The end-to-end test (``slow``) copies workflow/, scripts/ and config/ into a temporary folder
and runs config/tiny.yaml for real, MNIST and Fashion-MNIST fetched through eqp.data.sources into a
fresh data folder (torchvision's download, or an offline fallback where that fails).
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_helpers import (
    REPO,
    SNAKEFILE,
    SNAKEMAKE,
    copy_workflow,
    dry_counts,
    job_counts,
    pipeline_results,
    probe_benchmark_files,
    run_snakemake,
    write_config,
)

from eqp import pipeline
from eqp.config.settings import SettingsError, load_yaml
from eqp.outputs.runs import job_benchmarks, runs_table

DEFAULT_CONFIG = REPO / "config" / "config.yaml"
DEMO_CONFIG = REPO / "config" / "demo.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TABLE_TRIALS = 14
ALL_TRIALS = 15
TRAIN_FILES = pipeline.TRIAL_FILES
# Rules with outputs (`all` has none): one lint each, the documented conda one.
RULES = (
    "fetch_dataset",
    "train_trial",
    "train_sweep_point",
    "figure",
    "table1",
    "runs_index",
    "job_benchmarks",
)


def default_config() -> dict[str, Any]:
    return load_yaml(DEFAULT_CONFIG)


# -- eqp.pipeline: the config resolved into jobs ------------------------------------------


@pytest.fixture(scope="module")
def demo_plan() -> pipeline.Plan:
    return pipeline.Plan.from_config(default_config(), REPO)


def test_default_config_has_every_trial_and_the_published_sweep(demo_plan) -> None:
    assert len(demo_plan.trial_names) == ALL_TRIALS
    assert "mnist_3layer_mlffpl" in demo_plan.trial_names
    assert demo_plan.seeds == (0,)
    labels = demo_plan.sweep_labels
    assert len(labels) == 31 and len(set(labels)) == 31
    assert labels[0] == "0.000000" and labels[1] == "0.000100" and labels[-1] == "1.000000"
    expected = [0.0, *np.logspace(-4, 0, 30)]
    assert np.allclose(list(demo_plan.sweep_points.values()), expected, rtol=0, atol=0)


def test_demo_keeps_small_trials_at_published_settings() -> None:
    demo_plan = pipeline.Plan.from_config(load_yaml(DEMO_CONFIG), REPO)
    assert demo_plan.preset == "demo"
    paper = pipeline.Plan.from_config(load_yaml(REPO / "config" / "paper.yaml"), REPO)
    for name in demo_plan.trial_names:
        demo, full = demo_plan.trial_settings(name, 0), paper.trial_settings(name, 0)
        if demo.dataset in ("diabetes", "wine"):
            assert demo == full, name
        else:
            assert demo.epochs < full.epochs and demo.train_examples is not None, name
            changed = {k for k, v in demo.to_dict().items() if v != full.to_dict()[k]}
            assert changed <= {"epochs", "train_examples", "test_examples"}, (name, changed)


def test_findings_preset_trains_mnist_on_the_full_data_with_converged_settling(
    demo_plan,
) -> None:
    """The default: small trials as published (faithful); MNIST one full epoch, settle: sor."""
    assert demo_plan.preset == "findings"
    paper = pipeline.Plan.from_config(load_yaml(REPO / "config" / "paper.yaml"), REPO)
    for name in demo_plan.trial_names:
        ours, full = demo_plan.trial_settings(name, 0), paper.trial_settings(name, 0)
        if ours.dataset in ("diabetes", "wine"):
            assert ours == full and ours.settle == "euler", name
        else:
            assert (ours.epochs, ours.settle) == (1, "sor"), name
            assert ours.train_examples is None and ours.test_examples is None, name
            changed = {k for k, v in ours.to_dict().items() if v != full.to_dict()[k]}
            assert changed == {"epochs", "settle"}, (name, changed)
    point = demo_plan.sweep_settings("0.057362", 0)
    assert point.settle == "sor" and point.test_examples is None


def test_sweep_point_is_the_base_trial_with_p_and_sweep_epochs(demo_plan) -> None:
    point = demo_plan.sweep_settings("0.000100", 3)
    base = demo_plan.trial_settings("mnist_5layer_swni", 3)
    assert point.bypass_p == pytest.approx(1e-4) and point.seed == 3
    assert point.epochs == default_config()["sweep"]["epochs"]
    assert point.train_examples == default_config()["sweep"]["overrides"]["train_examples"]
    assert point.layer_sizes == base.layer_sizes and point.bypass_mag == base.bypass_mag
    with pytest.raises(SettingsError, match="not a point"):
        demo_plan.sweep_settings("0.123456", 0)


def test_override_layers_apply_in_order() -> None:
    config = default_config()
    config["overrides"] = {"test_examples": 100}
    config["dataset_overrides"] = {"wine": {"epochs": 4}, "mnist": {"epochs": 2}}
    config["trial_overrides"] = {"wine_5layer_mlff": {"epochs": 7}}
    config["device"] = "cuda"
    plan = pipeline.Plan.from_config(config, REPO)
    assert plan.trial_settings("wine_5layer_mlff", 0).epochs == 7
    assert plan.trial_settings("wine_5layer_swni", 0).epochs == 4
    assert plan.trial_settings("mnist_5layer_mlff", 0).epochs == 2
    assert plan.trial_settings("diabetes_5layer_mlff", 0).epochs == 10
    assert plan.trial_settings("diabetes_5layer_mlff", 0).test_examples == 100
    assert all(plan.trial_settings(n, 0).device == "cuda" for n in plan.trial_names)
    assert plan.gpu_resources() == {"gpu": 1}
    assert pipeline.Plan.from_config(default_config(), REPO).gpu_resources() == {}


def test_job_params_change_only_for_the_changed_trial() -> None:
    config = default_config()
    before = pipeline.Plan.from_config(config, REPO)
    config["trial_overrides"] = {"wine_5layer_mlff": {"epochs": 2}}
    after = pipeline.Plan.from_config(config, REPO)
    changed = [
        n
        for n in before.trial_names
        if before.trial_job(n, 0).params != after.trial_job(n, 0).params
    ]
    assert changed == ["wine_5layer_mlff"]
    assert before.sweep_job("0.000100", 0).params == after.sweep_job("0.000100", 0).params


def test_resources_scale_with_the_work(demo_plan) -> None:
    paper = pipeline.Plan.from_config(load_yaml(REPO / "config" / "paper.yaml"), REPO)
    small = demo_plan.trial_job("wine_5layer_mlff", 0).resources
    big = paper.trial_job("mnist_3layer_swni", 0).resources
    assert small["runtime"] >= pipeline.MIN_RUNTIME_MIN and small["mem_mb"] >= 1000
    assert big["runtime"] > 100 * small["runtime"] and big["mem_mb"] > small["mem_mb"]


def test_paths_and_figure_inputs(demo_plan) -> None:
    assert demo_plan.trial_folder("wine_5layer_mlff", 0) == "results/trials/wine_5layer_mlff/seed0"
    assert demo_plan.sweep_folder("0.000100", 1) == "results/sweep/p0.000100/seed1"
    assert not demo_plan.trial_checkpoint("a", 0).startswith("results/trials/")
    assert set(demo_plan.figure_groups("fig2")) == {
        "mnist_3layer_mlff",
        "mnist_3layer_mlffpl",
        "mnist_3layer_swni",
    }
    assert all("/sweep/" in f for f in demo_plan.figure_inputs("fig4"))
    assert len(demo_plan.table_groups()) == TABLE_TRIALS
    assert "mnist_3layer_mlffpl" not in demo_plan.table_groups()
    wine = demo_plan.trial_settings("wine_5layer_mlff", 0)
    mnist = demo_plan.trial_settings("mnist_5layer_mlff", 0)
    assert demo_plan.data_inputs(wine) == [] and demo_plan.data_root(wine) is None
    assert demo_plan.data_inputs(mnist) == ["resources/datasets/MNIST/raw/checksums.json"]


def test_colliding_sweep_folders_are_refused() -> None:
    config = default_config()
    config["sweep"]["logspace"] = {"start": -8, "stop": -6, "num": 5}
    with pytest.raises(SettingsError, match="share the folder"):
        pipeline.Plan.from_config(config, REPO)


def test_cli_values_get_their_types_back() -> None:
    parsed = {"seeds": ["0", "1"], "device": "cuda", "x": {"epochs": "2", "p": "1e-3"}}
    assert pipeline.typed_cli_values(parsed) == {
        "seeds": [0, 1],
        "device": "cuda",
        "x": {"epochs": 2, "p": 0.001},
    }
    assert pipeline.typed_cli_values({"dataset_source_dir": "null"}) == {"dataset_source_dir": None}


# -- sweep.ensemble: the sweep of one seed as one job -----------------------------------------


def ensemble_config(ensemble: Any, base: Path = DEMO_CONFIG, **changes: Any) -> dict[str, Any]:
    """A preset with ``sweep.ensemble`` set (left out for None) and top-level ``changes``."""
    config = {**load_yaml(base), **changes}
    config["sweep"] = {k: v for k, v in config["sweep"].items() if k != "ensemble"}
    if ensemble is not None:
        config["sweep"]["ensemble"] = ensemble
    return config


def test_sweep_ensemble_auto_is_on_only_on_cuda_where_the_points_stack() -> None:
    def resolved(config: dict[str, Any]) -> bool:
        return pipeline.Plan.from_config(config, REPO).sweep_ensemble

    assert not resolved(ensemble_config(None))  # demo: euler on cpu
    assert not resolved(ensemble_config("auto"))
    assert resolved(ensemble_config(None, device="cuda"))
    assert resolved(ensemble_config("auto", device="cuda:1"))
    assert not resolved(ensemble_config(False, device="cuda"))
    assert resolved(ensemble_config(True))  # asked for on a CPU: allowed
    # the default preset's sweep settles with sor, which an ensemble cannot run
    assert not resolved(ensemble_config("auto", base=DEFAULT_CONFIG, device="cuda"))
    assert not resolved(ensemble_config("auto", engine="dense", device="cuda"))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (ensemble_config(True, base=DEFAULT_CONFIG), "settle with 'sor'"),
        (ensemble_config(True, engine="dense"), "engine is 'dense'"),
        (ensemble_config("yes"), "must be auto, true or false, got 'yes'"),
    ],
    ids=["sor", "dense", "value"],
)
def test_sweep_ensemble_that_cannot_be_trained_is_refused(config: dict, expected: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(expected)) as caught:
        pipeline.Plan.from_config(config, REPO)
    assert "sweep.ensemble" in str(caught.value) and "\n" not in str(caught.value)


def test_ensemble_job_is_every_sweep_point_of_its_seed() -> None:
    plan = pipeline.Plan.from_config(ensemble_config(True, seeds=[0, 3]), REPO)
    labels = plan.sweep_labels
    assert len(labels) == 31
    for seed in plan.seeds:
        job = plan.sweep_ensemble_job(seed)
        assert list(job.params) == [plan.sweep_job(p, seed).params[0] for p in labels]
        assert list(job.folders) == [plan.sweep_folder(p, seed) for p in labels]
        assert list(job.checkpoints) == [plan.sweep_checkpoint(p, seed) for p in labels]
        assert len(set(job.checkpoints)) == 31
    assert {m["settings"]["bypass_p"] for m in plan.sweep_ensemble_job(3).params} == set(
        plan.sweep_points.values()
    )
    assert {m["settings"]["seed"] for m in plan.sweep_ensemble_job(3).params} == {3}
    outputs = [f for seed in plan.seeds for f in plan.sweep_ensemble_job(seed).outputs]
    assert sorted(outputs) == sorted(plan.all_sweep_outputs())
    assert len(outputs) == len(set(outputs)) == 2 * 31 * len(TRAIN_FILES)
    pattern = plan.ensemble_outputs(None)
    assert pattern[0] == "results/sweep/p0.000000/seed{seed}/" + TRAIN_FILES[0]


def test_ensemble_resources_hold_every_member() -> None:
    paper = load_yaml(REPO / "config" / "paper.yaml")
    paper_file = REPO / "config" / "paper.yaml"
    cpu = pipeline.Plan.from_config(ensemble_config(True, base=paper_file), REPO)
    points = [cpu.sweep_job(p, 0).resources for p in cpu.sweep_labels]
    ensemble = cpu.sweep_ensemble_job(0).resources
    # the data set once, every member's weights and particles
    assert max(r["mem_mb"] for r in points) < ensemble["mem_mb"] < sum(r["mem_mb"] for r in points)
    # on a CPU an ensemble is slower than the members' fused-kernel jobs one after another
    members = [cpu.sweep_settings(p, 0) for p in cpu.sweep_labels]
    alone = sum(pipeline.estimate_seconds(m) - pipeline.JOB_OVERHEAD_S for m in members)
    assert pipeline.estimate_ensemble_seconds(members) > alone
    assert ensemble["runtime"] > max(r["runtime"] for r in points)

    cuda = pipeline.Plan.from_config({**paper, "device": "cuda"}, REPO)
    assert cuda.sweep_ensemble and cuda.gpu_resources() == {"gpu": 1}
    on_gpu = cuda.sweep_ensemble_job(0).resources
    # the members' batches and particles live on the GPU: the host stages one at a time
    assert max(r["mem_mb"] for r in points) < on_gpu["mem_mb"] < ensemble["mem_mb"] / 4
    assert pipeline.MIN_RUNTIME_MIN <= on_gpu["runtime"] < ensemble["runtime"] / 10
    # the paper sweep (31 points, 10 epochs, full MNIST): ~17 min at the rates an H200 gave
    assert 30 <= on_gpu["runtime"] <= 240
    # a GPU settles the members together: more members cost far less than proportionally
    on_cuda = [cuda.sweep_settings(p, 0) for p in cuda.sweep_labels]
    half = pipeline.estimate_ensemble_seconds(on_cuda[:15])
    assert pipeline.estimate_ensemble_seconds(on_cuda) < 2 * half
    for estimate in (pipeline.estimate_ensemble_resources, pipeline.estimate_ensemble_mem_mb):
        with pytest.raises(SettingsError, match="at least one member"):
            estimate([])


# -- schema and config errors --------------------------------------------------------------


def _bad(change) -> dict[str, Any]:
    config = copy.deepcopy(default_config())
    change(config)
    return config


BAD_CONFIGS = {
    "seeds": (lambda c: c.update(seeds="zero"), ["seeds", "not of type 'array'"]),
    "seed_type": (lambda c: c.update(seeds=[0, "one"]), ["seeds[1]", "integer"]),
    "preset": (lambda c: c.update(preset="fast"), ["preset", "'demo', 'paper'"]),
    "negative_epochs": (
        lambda c: c.update(overrides={"epochs": -1}),
        ["overrides.epochs", "minimum of 0"],
    ),
    "p_outside_0_1": (
        lambda c: c["sweep"]["logspace"].update(stop=1),
        ["sweep.logspace.stop", "maximum of 0"],
    ),
    "p_count": (
        lambda c: c["sweep"]["logspace"].update(num=0),
        ["sweep.logspace.num", "minimum of 1"],
    ),
    "p_spec_missing": (
        lambda c: c["sweep"].update(logspace={"start": -4, "stop": 0}),
        ["sweep.logspace", "'num' is a required property"],
    ),
    "unknown_trial": (
        lambda c: c.update(trial_overrides={"mnist_9layer": {"epochs": 1}}),
        ["trial_overrides", "mnist_9layer"],
    ),
    "unknown_key": (lambda c: c.update(colour="blue"), ["colour", "not allowed"]),
    "unknown_setting": (
        lambda c: c.update(overrides={"epoch": 2}),
        ["overrides", "'epoch' was unexpected"],
    ),
    "device": (lambda c: c.update(device="tpu"), ["device", "does not match"]),
    "batch_too_big": (
        lambda c: c.update(trial_overrides={"wine_5layer_mlff": {"batch_size": 1000}}),
        ["wine_5layer_mlff", "batch_size"],
    ),
    "mlff_sweep": (
        lambda c: c["sweep"].update(base="mnist_5layer_mlff"),
        ["sweep.base", "MLFF"],
    ),
    "ensemble_value": (
        lambda c: c["sweep"].update(ensemble="sometimes"),
        ["sweep.ensemble", "'sometimes' is not one of ['auto', True, False]"],
    ),
    "ensemble_of_sor_points": (  # the default preset's sweep settles with sor
        lambda c: c["sweep"].update(ensemble=True),
        ["sweep.ensemble is true", "settle with 'sor'", "sweep.overrides.settle: euler"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_readable_message(case: str, tmp_path: Path) -> None:
    change, expected = BAD_CONFIGS[case]
    path = write_config(tmp_path / "bad.yaml", _bad(change))
    proc = run_snakemake("-n", "--configfile", str(path), cwd=tmp_path, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    lines = [line for line in output.splitlines() if line.startswith("invalid config")]
    assert len(lines) == 1, output
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback (most recent call last)" not in output
    assert "Failed validating" not in output  # no jsonschema schema dump


def schema_properties(node: Any, path: str = "") -> list[tuple[str, dict]]:
    """Every property anywhere in the schema (under properties, and the $defs), with its path."""
    found = []
    if isinstance(node, dict):
        for key, child in (node.get("properties") or {}).items():
            found.append((f"{path}.{key}".lstrip("."), child))
        for key, child in node.items():
            found += schema_properties(child, f"{path}.{key}".lstrip("."))
    return found


def test_every_schema_property_is_described() -> None:
    schema = pipeline.load_schema(SCHEMA)
    properties = schema_properties(schema)
    assert len(properties) > 45
    undescribed = [path for path, node in properties if not str(node.get("description", ""))]
    assert not undescribed, undescribed
    assert all(schema["$defs"][name].get("description") for name in ("settings", "trial"))
    for name in ("settle", "settle_tol", "settle_max_steps"):
        assert name in schema["$defs"]["settings"]["properties"], name


def test_validation_fills_the_defaults_and_never_an_override() -> None:
    """Optional pipeline keys get their default; a trial setting has none on purpose, because
    a default in an override would overwrite every trial's own value."""
    from snakemake.utils import validate

    schema = pipeline.load_schema(SCHEMA)
    optional = [k for k in schema["properties"] if k not in schema["required"]]
    without_default = {k for k in optional if "default" not in schema["properties"][k]}
    assert without_default == {"trials", "trials_file"}  # exclusive: one of them is given
    assert not [k for k, v in schema["$defs"]["settings"]["properties"].items() if "default" in v]

    config = {
        "preset": "demo",
        "seeds": [0],
        "trials_file": "config/paper.yaml",
        "trial_overrides": {"wine_5layer_mlff": {"epochs": 2}},
        "sweep": {"base": "mnist_5layer_swni", "epochs": 1, "logspace": {"start": -1,
                  "stop": 0, "num": 2}},
    }  # fmt: skip
    validate(config, str(SCHEMA))
    assert config["results_dir"] == "results" and config["threads_per_job"] == 1
    assert config["sweep"]["include_zero"] is True and config["sweep"]["overrides"] == {}
    assert config["overrides"] == {} and config["dataset_overrides"] == {}
    assert config["trial_overrides"] == {"wine_5layer_mlff": {"epochs": 2}}


def test_config_readme_tables_are_the_ones_generated_from_the_schema() -> None:
    readme = (REPO / "config" / "README.md").read_text()
    generated = pipeline.config_doc(pipeline.load_schema(SCHEMA))
    assert pipeline.generated_section(readme) == generated, (
        "config/README.md is out of date: run `python -m eqp config-doc --write config/README.md`"
    )
    for path, _ in schema_properties(pipeline.load_schema(SCHEMA)):
        leaf = path.rsplit(".", 1)[-1]
        if not path.startswith("$defs.positive_number"):
            assert f"`{leaf}`" in generated or f".{leaf}`" in generated, path


def test_config_doc_command_rewrites_only_its_section(tmp_path: Path, capsys) -> None:
    from eqp import cli

    readme = tmp_path / "README.md"
    text = (REPO / "config" / "README.md").read_text()
    stale = text.replace("| `seeds` |", "| `seeds_old` |")
    readme.write_text(stale)
    assert cli.main(["config-doc", "--schema", str(SCHEMA), "--write", str(readme)]) == 0
    assert readme.read_text() == text
    assert cli.main(["config-doc", "--schema", str(SCHEMA)]) == 0
    printed = capsys.readouterr().out
    assert printed.endswith(pipeline.config_doc(pipeline.load_schema(SCHEMA)))
    readme.write_text("# no markers\n")
    assert cli.main(["config-doc", "--schema", str(SCHEMA), "--write", str(readme)]) == 2
    err = capsys.readouterr().err
    assert "lacks the markers" in err and len(err.strip().splitlines()) == 1
    assert readme.read_text() == "# no markers\n"


# -- the DAG -------------------------------------------------------------------------------


def test_default_dag_has_every_job(tmp_path: Path) -> None:
    counts = dry_counts(tmp_path, "--configfile", str(DEFAULT_CONFIG))
    assert counts["train_trial"] == ALL_TRIALS
    assert counts["train_sweep_point"] == 31
    assert counts["figure"] == 4
    assert all(counts[rule] == 1 for rule in ("table1", "runs_index", "job_benchmarks", "all"))
    assert counts["fetch_dataset"] == 2


def test_more_seeds_multiply_the_training_jobs(tmp_path: Path) -> None:
    counts = dry_counts(tmp_path, "--configfile", str(DEFAULT_CONFIG), "--config", "seeds=[0,1]")
    assert counts["train_trial"] == 2 * ALL_TRIALS
    assert counts["train_sweep_point"] == 2 * 31
    assert counts["table1"] == 1


def test_figure4_needs_only_the_sweep(tmp_path: Path) -> None:
    counts = dry_counts(
        tmp_path, "--configfile", str(DEFAULT_CONFIG), targets=("figures/fig4.pdf",)
    )
    assert counts == {"fetch_dataset": 1, "train_sweep_point": 31, "figure": 1, "total": 33}


def test_figure2_needs_only_its_three_trials(tmp_path: Path) -> None:
    counts = dry_counts(
        tmp_path, "--configfile", str(DEFAULT_CONFIG), targets=("figures/fig2.pdf",)
    )
    assert counts == {"fetch_dataset": 1, "train_trial": 3, "figure": 1, "total": 5}


def test_one_figure_rule_makes_each_figure_from_its_own_inputs(tmp_path: Path) -> None:
    """The figure wildcard picks each figure's folders, memory and files (dry run)."""
    proc = run_snakemake(
        "figures/fig5.png", "figures/fig4.pdf", "-n", "--configfile", str(DEFAULT_CONFIG),
        cwd=tmp_path,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    jobs = [block.split("resources:")[0] + block.split("resources:")[1].split("\n")[0]
            for block in output.split("rule figure:")[1:]]  # fmt: skip
    assert len(jobs) == 2, output
    by_figure = {re.search(r"wildcards: figure=(fig\d)", job).group(1): job for job in jobs}
    assert "figures/fig5.pdf, figures/fig5.png" in by_figure["fig5"]
    assert "mem_mb=4000" in by_figure["fig5"] and "mem_mb=2000" in by_figure["fig4"]
    assert "mnist_5layer_swni/seed0/summary.json" in by_figure["fig5"]
    assert "/trials/" not in by_figure["fig4"] and "/sweep/" not in by_figure["fig5"]


def probe_settings(tmp_path: Path, *args: str, trial: str = "mnist_5layer_mlff") -> dict:
    """The settings the real Snakefile resolves for ``trial``, printed by a one-line wrapper."""
    probe = tmp_path / "Probe.smk"
    probe.write_text(
        f"include: {str(SNAKEFILE)!r}\n"
        "import json\n"
        f"print('PROBE', json.dumps(PLAN.trial_job({trial!r}, 0).params[0]['settings']))\n"
    )
    proc = run_snakemake("-n", *args, cwd=tmp_path, snakefile=probe)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return json.loads(output.split("PROBE ", 1)[1].splitlines()[0])


def test_paper_config_replaces_the_demo_config(tmp_path: Path) -> None:
    """--configfile replaces config/config.yaml: no demo override leaks into a paper run."""
    settings = probe_settings(tmp_path, "--configfile", str(REPO / "config" / "paper.yaml"))
    assert settings["epochs"] == 100 and settings["train_examples"] is None


def test_scientific_notation_in_a_config_file_is_a_number(tmp_path: Path) -> None:
    """Snakemake reads config files as YAML 1.1, where 1e-3 is a string; it arrives a number."""
    config = default_config()
    config["trials_file"] = str(REPO / config["trials_file"])  # the probe lives in tmp_path
    config["trial_overrides"] = {"wine_5layer_mlff": {"learning_rate": "1e-3", "beta": "2E+0"}}
    config["sweep"]["logspace"]["start"] = "-1e0"
    path = tmp_path / "sci.yaml"
    # written by hand: a YAML writer would quote 1e-3, which is not what a user types
    path.write_text(
        yaml.safe_dump(config, sort_keys=False)
        .replace("'1e-3'", "1e-3")
        .replace("'2E+0'", "2E+0")
        .replace("'-1e0'", "-1e0")
    )
    assert "learning_rate: 1e-3" in path.read_text()
    settings = probe_settings(tmp_path, "--configfile", str(path), trial="wine_5layer_mlff")
    assert settings["learning_rate"] == 0.001 and settings["beta"] == 2.0


def test_scientific_notation_on_the_snakemake_command_line_is_a_number(tmp_path: Path) -> None:
    config = default_config()
    config["trials_file"] = str(REPO / config["trials_file"])  # the probe lives in tmp_path
    settings = probe_settings(
        tmp_path, "--configfile", str(write_config(tmp_path / "demo.yaml", config)),
        "--config", "overrides={learning_rate: 1e-3, epsilon: 5E-1}",
    )  # fmt: skip
    assert settings["learning_rate"] == 0.001 and settings["epsilon"] == 0.5


def test_workflow_lint_has_only_the_documented_conda_lint() -> None:
    proc = subprocess.run(
        [str(SNAKEMAKE), "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    output = proc.stdout + proc.stderr
    titles = {line.strip() for line in output.splitlines() if line.startswith("    * ")}
    # Every rule runs in the one environment that also holds eqp, which the Snakefile imports
    # while building the DAG; per-rule conda envs could not provide it (see workflow/Snakefile).
    assert titles == {"* Specify a conda environment or container for each rule.:"}, output
    rules = re.findall(r"^Lints for rule (\w+)", output, flags=re.MULTILINE)
    assert sorted(rules) == sorted(RULES), output
    assert "Lints for snakefile" not in output, output


# -- sweep.ensemble in the DAG ----------------------------------------------------------------


def ensemble_configfile(tmp_path: Path, ensemble: Any, **changes: Any) -> str:
    """The demo preset with sweep.ensemble (None: unset) as a config file; an absolute
    trials_file, so that a probe Snakefile in tmp_path finds it too."""
    config = ensemble_config(ensemble, **changes)
    config["trials_file"] = str(REPO / config["trials_file"])
    name = f"ensemble_{ensemble}_{'_'.join(map(str, changes.values()))}.yaml"
    return str(write_config(tmp_path / name, config))


def test_ensemble_trains_the_sweep_in_one_job_per_seed(tmp_path: Path) -> None:
    configfile = ensemble_configfile(tmp_path, True)
    counts = dry_counts(tmp_path, "--configfile", configfile, "--config", "seeds=[0,1]")
    assert counts["train_sweep_ensemble"] == 2 and "train_sweep_point" not in counts
    assert counts["train_trial"] == 2 * ALL_TRIALS and counts["figure"] == 4
    fig4 = dry_counts(tmp_path, "--configfile", configfile, targets=("figures/fig4.pdf",))
    assert fig4 == {"fetch_dataset": 1, "train_sweep_ensemble": 1, "figure": 1, "total": 3}


@pytest.mark.parametrize("ensemble", [False, "auto"])
def test_without_ensemble_the_dag_is_unchanged(tmp_path: Path, ensemble: Any) -> None:
    """sweep.ensemble false, or auto on a CPU: one train_sweep_point job per point, as before."""
    unset = dry_counts(tmp_path, "--configfile", ensemble_configfile(tmp_path, None))
    counts = dry_counts(tmp_path, "--configfile", ensemble_configfile(tmp_path, ensemble))
    assert counts == unset
    assert counts["train_sweep_point"] == 31 and "train_sweep_ensemble" not in counts


def test_ensemble_job_writes_every_folder_of_its_seed_and_asks_for_a_gpu_on_cuda(
    tmp_path: Path,
) -> None:
    """auto on a CUDA device: one job, the 31 folders as outputs, a GPU, memory for all."""
    configfile = ensemble_configfile(tmp_path, "auto", device="cuda")
    proc = run_snakemake("figures/fig4.pdf", "-n", "--configfile", configfile, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    blocks = output.split("rule train_sweep_ensemble:")[1:]
    assert len(blocks) == 1, output
    job = blocks[0].split("\n[")[0]
    plan = pipeline.Plan.from_config(ensemble_config("auto", device="cuda"), REPO)
    outputs = re.search(r"output: (.*)", job).group(1).split(", ")
    assert sorted(outputs) == sorted(plan.sweep_ensemble_job(0).outputs)
    assert "log: logs/sweep/ensemble/seed0.log" in job
    assert "benchmark: benchmarks/runs/sweep/ensemble/seed0.tsv" in job
    resources = re.search(r"resources: (.*)", job).group(1)
    assert "gpu=1" in resources, resources
    limits = plan.sweep_ensemble_job(0).resources
    assert f"mem_mb={limits['mem_mb']}," in resources, resources
    assert f"runtime={limits['runtime']}," in resources, resources


def test_jobs_table_reads_the_benchmarks_of_whichever_sweep_rule_runs(tmp_path: Path) -> None:
    ensemble = probe_benchmark_files(tmp_path, ensemble_configfile(tmp_path, True))
    assert ensemble["train_sweep_ensemble"] == ["benchmarks/runs/sweep/ensemble/seed0.tsv"]
    assert "train_sweep_point" not in ensemble
    points = probe_benchmark_files(tmp_path, ensemble_configfile(tmp_path, False))
    assert len(points["train_sweep_point"]) == 31 and "train_sweep_ensemble" not in points
    assert points["train_sweep_point"][0] == "benchmarks/runs/sweep/p0.000000/seed0.tsv"
    assert {k: v for k, v in ensemble.items() if "sweep" not in k} == {
        k: v for k, v in points.items() if "sweep" not in k
    }


def test_ensemble_rule_has_only_the_documented_conda_lint(tmp_path: Path) -> None:
    proc = run_snakemake("--lint", "--configfile", ensemble_configfile(tmp_path, True), cwd=REPO)
    output = proc.stdout + proc.stderr
    rules = re.findall(r"^Lints for rule (\w+)", output, flags=re.MULTILINE)
    expected = [rule for rule in RULES if rule != "train_sweep_point"] + ["train_sweep_ensemble"]
    assert sorted(rules) == sorted(expected), output
    titles = {line.strip() for line in output.splitlines() if line.startswith("    * ")}
    assert titles == {"* Specify a conda environment or container for each rule.:"}, output


def test_unstackable_ensemble_job_ends_with_one_line_and_no_folder(tmp_path: Path) -> None:
    plan = pipeline.Plan.from_config(ensemble_config(True), REPO)
    members = copy.deepcopy(list(plan.sweep_ensemble_job(0).params[:2]))
    members[1]["settings"]["batch_size"] = 10
    folders = [tmp_path / "p0", tmp_path / "p1"]
    log = tmp_path / "logs" / "job.log"
    with pytest.raises(SystemExit) as caught:
        pipeline.train_ensemble(
            members, folders, data_root=None, checkpoints=[None, None], log_path=log
        )
    message = str(caught.value)
    assert message.startswith("error: ") and "\n" not in message
    assert "batch_size" in message and "sweep.ensemble: false" in message
    assert "error: " in log.read_text() and "Traceback" not in log.read_text()
    assert not any(folder.exists() for folder in folders)
    with pytest.raises(SettingsError, match="one folder and one checkpoint per member"):
        pipeline.train_ensemble(
            members, folders[:1], data_root=None, checkpoints=[None, None], log_path=log
        )


# -- end to end on config/tiny.yaml --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the workflow that has run config/tiny.yaml to the end, once, uninterrupted.

    Its data folder starts empty, so the run really fetches MNIST and Fashion-MNIST.
    """
    root = tmp_path_factory.mktemp("tiny")
    snakefile = copy_workflow(root)
    config = load_yaml(REPO / "config" / "tiny.yaml")
    config["data_dir"] = str(tmp_path_factory.mktemp("datasets"))
    config["results_dir"] = "results"
    configfile = write_config(root / "config" / "test.yaml", config)
    started = time.monotonic()
    proc = run_snakemake(
        "--cores", "2", "--configfile", str(configfile), cwd=root, snakefile=snakefile,
        timeout=900,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return {
        "root": root,
        "config": config,
        "configfile": configfile,
        "snakefile": snakefile,
        "output": output,
        "seconds": time.monotonic() - started,
    }


@pytest.mark.slow
def test_tiny_run_executes_every_rule(tiny_run: dict[str, Any]) -> None:
    counts = job_counts(tiny_run["output"])
    assert counts["train_trial"] == ALL_TRIALS
    assert counts["train_sweep_point"] == 4
    assert counts["fetch_dataset"] == 2
    assert counts["figure"] == 4
    assert all(counts[rule] == 1 for rule in ("table1", "runs_index", "job_benchmarks", "all"))
    finished = Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", tiny_run["output"]))
    assert finished == Counter({k: v for k, v in counts.items() if k != "total"})


@pytest.mark.slow
def test_tiny_run_produces_every_artifact(tiny_run: dict[str, Any]) -> None:
    root: Path = tiny_run["root"]
    plan = pipeline.Plan.from_config(tiny_run["config"], root)
    expected = [root / "figures" / f"fig{n}.{ext}" for n in (2, 3, 4, 5) for ext in ("pdf", "png")]
    expected += [root / "tables" / f"table1.{ext}" for ext in ("csv", "md", "tex")]
    expected += [root / f for f in plan.all_trial_outputs() + plan.all_sweep_outputs()]
    expected += [root / "results" / "runs.tsv", root / "results" / "jobs.tsv"]
    empty = [str(p) for p in expected if not p.is_file() or p.stat().st_size == 0]
    assert not empty, empty
    rows = (root / "tables" / "table1.csv").read_text().splitlines()
    assert len(rows) == 1 + TABLE_TRIALS
    assert [r.split(",")[0] for r in rows[1:3]] == ["diabetes_5layer_mlff", "diabetes_5layer_swni"]
    for kind in ("trials", "sweep", "figures", "data"):
        assert any((root / "logs" / kind).rglob("*.log")), kind
    benchmarks = list((root / "benchmarks" / "runs").rglob("*.tsv"))
    assert len(benchmarks) == 2 + ALL_TRIALS + 4 + 4 + 1 + 1
    # no checkpoint survives a finished job
    assert not list((root / "results" / "checkpoints").rglob("*.safetensors"))


@pytest.mark.slow
def test_runs_index_has_one_row_per_folder_with_the_published_values(
    tiny_run: dict[str, Any],
) -> None:
    root: Path = tiny_run["root"]
    runs = pd.read_csv(root / "results" / "runs.tsv", sep="\t")
    plan = pipeline.Plan.from_config(tiny_run["config"], root)
    expected = [str(Path(f).relative_to("results")) for f in plan.run_folders()]
    assert runs["folder"].tolist() == expected
    assert (runs["kind"] == "sweep").sum() == 4 and (runs["kind"] == "trial").sum() == ALL_TRIALS
    trials = runs[runs["kind"] == "trial"].set_index("name")
    for name in trials.index:
        summary = json.loads((root / f"results/trials/{name}/seed0/summary.json").read_text())
        assert trials.loc[name, "test_error"] == summary["test_error"], name
        assert trials.loc[name, "engine_layout"] == summary["engine_layout"], name
    wine = trials.loc["wine_5layer_swni"]
    assert wine["paper_test_error"] == 0.28 and wine["paper_epochs_run"] == 10
    assert runs[runs["kind"] == "sweep"]["paper_test_error"].isna().all()
    assert sorted(runs[runs["kind"] == "sweep"]["p"]) == [0.0, 0.01, 0.1, 1.0]
    # the tiny config varies data sets, layers, rates and batch sizes, not epochs or settle
    assert {"dataset", "layer_sizes", "learning_rate", "batch_size"} <= set(runs.columns)
    assert "epochs" not in runs.columns and set(runs["settle"]) == {"euler"}
    assert (runs["seconds_per_epoch"] > 0).all() and (runs["epochs_run"] == 1).all()

    jobs = pd.read_csv(root / "results" / "jobs.tsv", sep="\t")
    assert Counter(jobs["rule"]) == Counter(
        {"fetch_dataset": 2, "train_trial": ALL_TRIALS, "train_sweep_point": 4, "figure": 4,
         "table1": 1, "runs_index": 1}
    )  # fmt: skip
    assert "trials/wine_5layer_swni/seed0" in set(jobs["job"])
    assert (jobs["s"] > 0).all() and (jobs.loc[jobs["rule"] == "train_trial", "max_rss"] > 0).all()


@pytest.mark.slow
def test_runs_command_prints_the_index_of_the_pipeline_results(tiny_run: dict[str, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eqp", "runs", str(tiny_run["root"] / "results"), "--tsv"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    written = (tiny_run["root"] / "results" / "runs.tsv").read_text().splitlines()
    # the pipeline keeps the config's order; the command sorts by folder, trials first
    assert printed[0] == written[0] and sorted(printed[1:]) == sorted(written[1:])


@pytest.mark.slow
def test_tiny_run_fetched_mnist_and_fashion_mnist(tiny_run: dict[str, Any]) -> None:
    """Both data sets came through a download route (torchvision or an offline fallback)."""
    for folder in ("MNIST", "FashionMNIST"):
        record = json.loads(
            (Path(tiny_run["config"]["data_dir"]) / folder / "raw" / "checksums.json").read_text()
        )
        assert record["route"] not in ("existing", "user_dir"), record


@pytest.mark.slow
def test_second_run_has_nothing_to_do(tiny_run: dict[str, Any]) -> None:
    proc = run_snakemake(
        "-n", "--configfile", str(tiny_run["configfile"]),
        cwd=tiny_run["root"], snakefile=tiny_run["snakefile"],
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Nothing to be done" in output, output[-3000:]


@pytest.mark.slow
def test_changing_one_trial_reruns_only_it_and_what_reads_it(tiny_run: dict[str, Any]) -> None:
    config = copy.deepcopy(tiny_run["config"])
    config["trial_overrides"] = {"wine_5layer_mlff": {"epochs": 2}}
    changed = write_config(tiny_run["root"] / "config" / "changed.yaml", config)
    proc = run_snakemake(
        "-n", "--configfile", str(changed), cwd=tiny_run["root"], snakefile=tiny_run["snakefile"]
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    counts = job_counts(output)
    assert counts == {
        "train_trial": 1, "table1": 1, "runs_index": 1, "job_benchmarks": 1, "all": 1, "total": 5
    }, output[-3000:]  # fmt: skip
    assert re.findall(r"wildcards: trial=(\w+)", output) == ["wine_5layer_mlff"]


@pytest.mark.slow
def test_report_collects_figures_tables_runs_and_jobs(tiny_run: dict[str, Any]) -> None:
    report = tiny_run["root"] / "report.html"
    proc = run_snakemake(
        "--report", str(report), "--configfile", str(tiny_run["configfile"]),
        cwd=tiny_run["root"], snakefile=tiny_run["snakefile"],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report.is_file() and report.stat().st_size > 10_000
    html = report.read_text()
    for figure, start in ((2, "Training (solid)"), (3, "RMS correction"), (4, "Sweep of"),
                          (5, "Mean magnitude")):  # fmt: skip
        assert f"Figure {figure}.</strong> {start}" in html, figure
        assert f"Fig. {figure}" in html
    for text in ("runs.tsv", "jobs.tsv", "Runs index.", "Jobs.", "table1.csv"):
        assert text in html, text


def test_ensemble_run_writes_every_sweep_folder_and_figure4(
    tmp_path: Path, mnist_root: Path
) -> None:
    """config/tiny.yaml on a CPU with sweep.ensemble: true and three points, for real: one
    job trains them together, every folder is complete and Figure 4 is drawn from them."""
    snakefile = copy_workflow(tmp_path)
    config = load_yaml(REPO / "config" / "tiny.yaml")
    config["data_dir"] = str(mnist_root)
    config["sweep"].update(ensemble=True, logspace={"start": -1, "stop": 0, "num": 2})
    configfile = write_config(tmp_path / "config" / "ensemble.yaml", config)
    run = ("--configfile", str(configfile))
    proc = run_snakemake(
        "figures/fig4.pdf", "--cores", "2", *run, cwd=tmp_path, snakefile=snakefile
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    counts = job_counts(output)
    assert counts.get("train_sweep_ensemble") == 1 and "train_sweep_point" not in counts, counts

    plan = pipeline.Plan.from_config(config, tmp_path)
    assert plan.sweep_ensemble and len(plan.sweep_labels) == 3
    for label, folder in zip(plan.sweep_labels, plan.sweep_ensemble_job(0).folders, strict=True):
        for name in TRAIN_FILES:
            assert (tmp_path / folder / name).stat().st_size > 0, (folder, name)
        summary = json.loads((tmp_path / folder / "summary.json").read_text())
        assert summary["settings"]["bypass_p"] == plan.sweep_points[label], folder
        assert summary["settings"]["seed"] == 0 and summary["epochs_run"] == 1, folder
    for ext in ("pdf", "png"):
        assert (tmp_path / "figures" / f"fig4.{ext}").stat().st_size > 0
    log = (tmp_path / "logs" / "sweep" / "ensemble" / "seed0.log").read_text()
    assert "ensemble of 3 trials" in log, log[-3000:]
    assert (tmp_path / "benchmarks" / "runs" / "sweep" / "ensemble" / "seed0.tsv").is_file()
    assert not list((tmp_path / "logs" / "sweep").glob("p*"))  # no per-point job ran
    assert not list((tmp_path / "results" / "checkpoints").rglob("*.safetensors"))

    # what runs_index and job_benchmarks make of them (eqp.runs, as their scripts call it)
    runs = runs_table([tmp_path / f for f in plan.sweep_folders()], tmp_path / "results")
    assert runs["folder"].tolist() == [
        str(Path(f).relative_to("results")) for f in plan.sweep_folders()
    ]
    assert (runs["kind"] == "sweep").all() and sorted(runs["p"]) == [0.0, 0.1, 1.0]
    benchmarks = tmp_path / "benchmarks" / "runs"
    jobs = job_benchmarks(
        {
            "train_sweep_ensemble": [benchmarks / "sweep" / "ensemble" / "seed0.tsv"],
            "figure": [benchmarks / "figures" / "fig4.tsv"],
        }
    )
    assert jobs["job"].tolist() == ["sweep/ensemble/seed0", "figures/fig4"]
    assert (jobs["s"] > 0).all() and jobs.loc[0, "max_rss"] > 0

    again = run_snakemake("figures/fig4.pdf", "-n", *run, cwd=tmp_path, snakefile=snakefile)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


# -- faults: the whole pipeline killed again and again ---------------------------------------

KILLS = 6
FINISHED = re.compile(r"Finished jobid: \d+ \(Rule: (\w+)\)")


def kill_when(job: subprocess.Popen, log: Path, done_before: int, after: int, delay: float) -> None:
    """SIGKILL ``job``'s process group ``delay`` s after the run's ``after``-th finished job."""
    deadline = time.monotonic() + 600
    while done_before + len(FINISHED.findall(log.read_text())) < after:
        assert job.poll() is None, f"the pipeline ended before its kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the pipeline made no progress in 10 minutes"
        time.sleep(0.05)
    time.sleep(delay)
    assert job.poll() is None, f"the pipeline ended before its kill:\n{log.read_text()[-3000:]}"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()


@pytest.mark.slow
def test_pipeline_killed_anywhere_resumes_to_the_uninterrupted_result(
    tiny_run: dict[str, Any], tmp_path: Path
) -> None:
    """SIGKILL the whole Snakemake process group at KILLS seeded random moments, unlock and
    resume each time; the end result equals the uninterrupted tiny run, bit for bit.

    A moment is a random delay (0-1 s) after a random number of finished jobs, one drawn
    from each of KILLS equal stretches of the run, so that the kills spread over the data
    fetch, the training jobs and the figures, table and indexes at the end.
    """
    root = tmp_path / "work"
    snakefile = copy_workflow(root)
    config = copy.deepcopy(tiny_run["config"])
    config["data_dir"] = str(tmp_path / "datasets")  # fetched again, so kills can land there
    configfile = write_config(root / "config" / "test.yaml", config)
    run = [str(SNAKEMAKE), "--snakefile", str(snakefile), "--directory", str(root),
           "--cores", "2", "--configfile", str(configfile), "--rerun-incomplete"]  # fmt: skip
    unlock = [str(SNAKEMAKE), "--snakefile", str(snakefile), "--directory", str(root),
              "--unlock", "--configfile", str(configfile)]  # fmt: skip
    rng = random.Random(20210611)
    # at least four jobs (table, indexes, `all`) are left when the last kill comes
    edges = np.linspace(0, job_counts(tiny_run["output"])["total"] - 4, KILLS + 1).astype(int)
    moments = [(rng.randrange(lo, hi), rng.uniform(0.0, 1.0)) for lo, hi in pairwise(edges)]

    done, interrupted = 0, []
    for round_, (after, delay) in enumerate(moments):
        log = root / f"round{round_}.log"
        with open(log, "w") as handle:
            job = subprocess.Popen(
                run, cwd=root, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
            kill_when(job, log, done, max(after, done), delay)
        text = log.read_text()
        started = Counter(re.findall(r"^(?:local)?rule (\w+):", text, flags=re.MULTILINE))
        finished = Counter(FINISHED.findall(text))
        done += sum(finished.values())
        interrupted.append(sorted((started - finished).elements()))
        subprocess.run(unlock, cwd=root, check=True, capture_output=True, timeout=120)

    final = subprocess.run(run, cwd=root, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, (final.stdout + final.stderr)[-6000:]
    print("jobs running at each kill:", interrupted)  # shown with pytest -s
    assert sum(bool(jobs) for jobs in interrupted) >= KILLS // 2, interrupted
    ours, reference = pipeline_results(root), pipeline_results(tiny_run["root"])
    assert sorted(ours) == sorted(reference)
    differing = [path for path in reference if ours[path] != reference[path]]
    assert not differing, differing


def test_a_job_is_resolved_once_and_read_by_every_rule_function(demo_plan) -> None:
    job = demo_plan.sweep_job("0.000100", 0)
    assert demo_plan.sweep_job("0.000100", "0") is job  # wildcards arrive as strings
    assert demo_plan.trial_job("wine_5layer_mlff", 0) is demo_plan.trial_job("wine_5layer_mlff", 0)
    (settings,) = job.members
    assert settings == demo_plan.sweep_settings("0.000100", 0)
    assert job.folders == (demo_plan.sweep_folder("0.000100", 0),)
    assert job.checkpoints == (demo_plan.sweep_checkpoint("0.000100", 0),)
    assert job.outputs == demo_plan.sweep_outputs("0.000100", 0)
    assert set(job.resources) >= {"mem_mb", "runtime"}


def test_a_job_starts_by_clearing_what_a_killed_attempt_left(tmp_path: Path) -> None:
    out = tmp_path / "results" / "runs.tsv"
    out.parent.mkdir()
    left = out.parent / ".runs.tsv.k1ll3d.tmp"
    other = out.parent / ".jobs.tsv.k1ll3d.tmp"  # another job's output: not ours
    folder = tmp_path / "results" / "trials" / "x" / "seed0"
    folder.mkdir(parents=True)
    in_folder = folder / ".model.safetensors.k1ll3d.tmp"
    for path in (left, other, in_folder):
        path.write_bytes(b"half")
    with pipeline.logged(tmp_path / "job.log", writes_to=(out, folder, None)):
        pass
    assert not left.exists() and not in_folder.exists() and other.exists()
