"""Helpers shared by the tests that run the real Snakemake workflow (kills, full disks, DAGs).

Each test runs a copy of workflow/, scripts/ and config/ in a temporary folder, so results a
developer already has in the repository never change what a test sees.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from safetensors import safe_open
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# Columns and keys that hold wall-clock time: the only values a rerun may change.
TIMING = re.compile(r"second|time", re.IGNORECASE)


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


def probe_benchmark_files(tmp_path: Path, configfile: str) -> dict[str, list[str]]:
    """The benchmark files job_benchmarks reads (rules/common.smk), printed by a probe."""
    probe = tmp_path / "ProbeBenchmarks.smk"
    probe.write_text(
        f"include: {str(SNAKEFILE)!r}\nimport json\nprint('PROBE', json.dumps(benchmark_files()))\n"
    )
    proc = run_snakemake("-n", "--configfile", configfile, cwd=tmp_path, snakefile=probe)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return json.loads(output.split("PROBE ", 1)[1].splitlines()[0])


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def copy_workflow(root: Path) -> Path:
    """A runnable copy of the workflow in ``root``; returns its Snakefile."""
    for name in ("workflow", "scripts", "config"):
        shutil.copytree(REPO / name, root / name)
    return root / "workflow" / "Snakefile"


def checkpoint_epoch(path: Path) -> int:
    """The last epoch a checkpoint holds; -1 while it is absent or being replaced."""
    try:
        with safe_open(str(path), framework="np") as handle:
            return json.loads(handle.metadata()["state"])["epoch"]
    except Exception:  # noqa: BLE001 - absent or being replaced: not there yet
        return -1


def csv_without_timing(path: Path, sep: str = ",") -> str:
    """A CSV/TSV file with every timing column dropped, whatever its other columns are."""
    frame = pd.read_csv(path, sep=sep)
    frame = frame.drop(columns=[c for c in frame.columns if TIMING.search(c)])
    return frame.to_csv(sep=sep, index=False)


def _arrays(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Arrays compared bit for bit (NaN included), with their dtype and shape."""
    return {
        key: (str(array.dtype), array.shape, np.ascontiguousarray(array).tobytes())
        for key, array in arrays.items()
    }


def comparable(path: Path) -> Any:
    """What of a result file must not change when its run is interrupted and resumed."""
    if path.name == "metrics.csv" or path.name == "table1.csv":
        return csv_without_timing(path)
    if path.name == "runs.tsv":
        return csv_without_timing(path, sep="\t")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return _arrays({key: data[key] for key in data.files})
    if path.suffix == ".safetensors":
        return _arrays(load_file(str(path)))
    if path.name == "summary.json":
        summary = json.loads(path.read_text())
        return {k: v for k, v in summary.items() if not TIMING.search(k)}
    raise AssertionError(f"no comparison defined for {path}")


def pipeline_results(root: Path, results_dir: str = "results") -> dict[str, Any]:
    """Every comparable file of a finished pipeline run, by path relative to ``root``.

    jobs.tsv is left out: it holds nothing but the jobs' runtimes and memory.
    """
    files = [p for p in (root / results_dir).rglob("*") if p.is_file() and p.name != "jobs.tsv"]
    files.append(root / "tables" / "table1.csv")
    return {str(p.relative_to(root)): comparable(p) for p in sorted(files)}


def complete(path: Path) -> bool:
    """Whether a result file reads back whole (a truncated one fails to parse)."""
    try:
        if path.suffix == ".safetensors":
            load_file(str(path))
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                [data[key] for key in data.files]
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".csv", ".tsv"):
            pd.read_csv(io.StringIO(path.read_text()), sep="\t" if path.suffix == ".tsv" else ",")
        else:
            return False
    except Exception:  # noqa: BLE001 - any parse failure means incomplete
        return False
    return True
