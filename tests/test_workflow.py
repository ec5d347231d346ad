"""The Snakemake pipeline: config resolution, schema messages, the DAG, and a real tiny run.

Dry runs use the real workflow/Snakefile with ``--directory`` set to an empty temporary
folder, so that results a developer already has in the repository never change the counts.
The end-to-end test (``slow``) copies workflow/, scripts/ and config/ into a temporary folder
and runs config/tiny.yaml for real, MNIST and Fashion-MNIST fetched through eqp.sources into a
fresh data folder (torchvision's download, or an offline fallback where that fails).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from eqp import pipeline
from eqp.settings import SettingsError, load_yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
TABLE_TRIALS = 14
ALL_TRIALS = 15
TRAIN_FILES = pipeline.TRIAL_FILES


def run_snakemake(
    *args: str, cwd: Path, snakefile: Path = SNAKEFILE, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    cmd = [str(SNAKEMAKE), "--snakefile", str(snakefile), "--directory", str(cwd), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The first 'Job stats' table of a Snakemake run, as rule -> count."""
    _, _, table = output.partition("Job stats:")
    counts: dict[str, int] = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def dry_counts(tmp_path: Path, *args: str, targets: tuple[str, ...] = ()) -> dict[str, int]:
    # targets first: --quiet and --configfile take several values and would swallow them
    proc = run_snakemake(*targets, "-n", "--quiet", "rules", *args, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    counts = job_counts(output)
    assert counts, output
    return counts


def default_config() -> dict[str, Any]:
    return load_yaml(DEFAULT_CONFIG)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


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


def test_demo_keeps_small_trials_at_published_settings(demo_plan) -> None:
    paper = pipeline.Plan.from_config(load_yaml(REPO / "config" / "paper.yaml"), REPO)
    for name in demo_plan.trial_names:
        demo, full = demo_plan.trial_settings(name, 0), paper.trial_settings(name, 0)
        if demo.dataset in ("diabetes", "wine"):
            assert demo == full, name
        else:
            assert demo.epochs < full.epochs and demo.train_examples is not None, name
            changed = {k for k, v in demo.to_dict().items() if v != full.to_dict()[k]}
            assert changed <= {"epochs", "train_examples", "test_examples"}, (name, changed)


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
        n for n in before.trial_names if before.trial_params(n, 0) != after.trial_params(n, 0)
    ]
    assert changed == ["wine_5layer_mlff"]
    assert before.sweep_params("0.000100", 0) == after.sweep_params("0.000100", 0)


def test_resources_scale_with_the_work(demo_plan) -> None:
    paper = pipeline.Plan.from_config(load_yaml(REPO / "config" / "paper.yaml"), REPO)
    small = demo_plan.trial_resources("wine_5layer_mlff", 0)
    big = paper.trial_resources("mnist_3layer_swni", 0)
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
        "x": {"epochs": 2, "p": "1e-3"},
    }
    assert pipeline.typed_cli_values({"dataset_source_dir": "null"}) == {"dataset_source_dir": None}


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


# -- the DAG -------------------------------------------------------------------------------


def test_default_dag_has_every_job(tmp_path: Path) -> None:
    counts = dry_counts(tmp_path, "--configfile", str(DEFAULT_CONFIG))
    assert counts["train_trial"] == ALL_TRIALS
    assert counts["train_sweep_point"] == 31
    assert all(counts[f] == 1 for f in ("fig2", "fig3", "fig4", "fig5", "table1"))
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
    assert counts == {"fetch_dataset": 1, "train_sweep_point": 31, "fig4": 1, "total": 33}


def test_figure2_needs_only_its_three_trials(tmp_path: Path) -> None:
    counts = dry_counts(
        tmp_path, "--configfile", str(DEFAULT_CONFIG), targets=("figures/fig2.pdf",)
    )
    assert counts == {"fetch_dataset": 1, "train_trial": 3, "fig2": 1, "total": 5}


def test_paper_config_replaces_the_demo_config(tmp_path: Path) -> None:
    """--configfile replaces config/config.yaml: no demo override leaks into a paper run.

    A one-line Snakefile around the real one prints the settings it resolved.
    """
    probe = tmp_path / "Probe.smk"
    probe.write_text(
        f"include: {str(SNAKEFILE)!r}\n"
        "import json\n"
        "print('PROBE', json.dumps(PLAN.trial_params('mnist_5layer_mlff', 0)['settings']))\n"
    )
    proc = run_snakemake(
        "-n", "--configfile", str(REPO / "config" / "paper.yaml"), cwd=tmp_path, snakefile=probe
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    settings = json.loads(output.split("PROBE ", 1)[1].splitlines()[0])
    assert settings["epochs"] == 100 and settings["train_examples"] is None


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
    assert len(rules) == 8, output  # one per rule with outputs; `all` has none


# -- end to end on config/tiny.yaml --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the workflow that has run config/tiny.yaml to the end, once.

    Its data folder starts empty, so the run really fetches MNIST and Fashion-MNIST.
    """
    root = tmp_path_factory.mktemp("tiny")
    dataset_cache = tmp_path_factory.mktemp("datasets")
    for name in ("workflow", "scripts", "config"):
        shutil.copytree(REPO / name, root / name)
    config = load_yaml(REPO / "config" / "tiny.yaml")
    config["data_dir"] = str(dataset_cache)
    config["results_dir"] = "results"
    configfile = write_config(root / "config" / "test.yaml", config)
    snakefile = root / "workflow" / "Snakefile"
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
    }


@pytest.mark.slow
def test_tiny_run_executes_every_rule(tiny_run: dict[str, Any]) -> None:
    counts = job_counts(tiny_run["output"])
    assert counts["train_trial"] == ALL_TRIALS
    assert counts["train_sweep_point"] == 4
    assert counts["fetch_dataset"] == 2
    assert all(counts[f] == 1 for f in ("fig2", "fig3", "fig4", "fig5", "table1", "all"))
    finished = Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", tiny_run["output"]))
    assert finished == Counter({k: v for k, v in counts.items() if k != "total"})


@pytest.mark.slow
def test_tiny_run_produces_every_artifact(tiny_run: dict[str, Any]) -> None:
    root: Path = tiny_run["root"]
    plan = pipeline.Plan.from_config(tiny_run["config"], root)
    expected = [root / "figures" / f"fig{n}.{ext}" for n in (2, 3, 4, 5) for ext in ("pdf", "png")]
    expected += [root / "tables" / f"table1.{ext}" for ext in ("csv", "md", "tex")]
    expected += [root / f for f in plan.all_trial_outputs() + plan.all_sweep_outputs()]
    empty = [str(p) for p in expected if not p.is_file() or p.stat().st_size == 0]
    assert not empty, empty
    rows = (root / "tables" / "table1.csv").read_text().splitlines()
    assert len(rows) == 1 + TABLE_TRIALS
    assert [r.split(",")[0] for r in rows[1:3]] == ["diabetes_5layer_mlff", "diabetes_5layer_swni"]
    for kind in ("trials", "sweep", "figures", "data"):
        assert any((root / "logs" / kind).rglob("*.log")), kind
    benchmarks = list((root / "benchmarks" / "runs").rglob("*.tsv"))
    assert len(benchmarks) == 2 + ALL_TRIALS + 4 + 4 + 1
    # no checkpoint survives a finished job
    assert not list((root / "results" / "checkpoints").rglob("*.safetensors"))


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
def test_changing_one_trial_reruns_only_it_and_the_table(tiny_run: dict[str, Any]) -> None:
    config = copy.deepcopy(tiny_run["config"])
    config["trial_overrides"] = {"wine_5layer_mlff": {"epochs": 2}}
    changed = write_config(tiny_run["root"] / "config" / "changed.yaml", config)
    proc = run_snakemake(
        "-n", "--configfile", str(changed), cwd=tiny_run["root"], snakefile=tiny_run["snakefile"]
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    counts = job_counts(output)
    assert counts == {"train_trial": 1, "table1": 1, "all": 1, "total": 3}, output[-3000:]
    assert re.findall(r"wildcards: trial=(\w+)", output) == ["wine_5layer_mlff"]


@pytest.mark.slow
def test_report_collects_figures_and_table(tiny_run: dict[str, Any]) -> None:
    report = tiny_run["root"] / "report.html"
    proc = run_snakemake(
        "--report", str(report), "--configfile", str(tiny_run["configfile"]),
        cwd=tiny_run["root"], snakefile=tiny_run["snakefile"],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report.is_file() and report.stat().st_size > 10_000
