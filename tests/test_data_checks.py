"""Data sets are md5-checked when they are read: a corrupt or truncated file is one line.

The issue's case: a few bytes of ``t10k-labels-idx1-ubyte`` overwritten after ``make run``.
Before, training failed with ``IndexError`` deep inside the data code and Snakemake said
"Nothing to be done"; now the read fails in one line naming the file, its md5, the expected
one and the fix, nothing is written, and the workflow stops before any job reads the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from workflow_helpers import REPO, copy_workflow, run_snakemake, write_config

from eqp.config.settings import load_yaml
from eqp.data import sources
from eqp.data.datasets import DataError, load_dataset
from eqp.data.sources import SPECS, DatasetError, raw_dir, stale_files

LABELS = "t10k-labels-idx1-ubyte"


@pytest.fixture
def data_copy(mnist_root: Path, tmp_path: Path) -> Path:
    """A private copy of the verified MNIST root, dated as fetched (files not after marker)."""
    root = tmp_path / "datasets"
    shutil.copytree(mnist_root, root, copy_function=shutil.copy2)
    return root


def _overwrite(path: Path, offset: int = 100, data: bytes = b"ggg") -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _train(root: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "eqp", "train", str(REPO / "config" / "paper.yaml"),
        "--trial", "mnist_5layer_swni", "--out", str(out), "--data-dir", str(root),
        "--epochs", "1", "--set", "train_examples=40", "--set", "test_examples=40",
        "--set", "free_iterations=5", "--no-progress",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_overwritten_labels_are_one_line_from_train_and_nothing_is_written(
    data_copy: Path, tmp_path: Path
) -> None:
    path = raw_dir("mnist", data_copy) / LABELS
    _overwrite(path)
    proc = _train(data_copy, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith(f"error: {path}: md5 is {sources._md5(path)}")
    assert f"expected {SPECS['mnist'].md5[LABELS]}" in line
    assert "python -m eqp fetch mnist" in line and "delete" in line
    assert "IndexError" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_truncated_file_is_one_clear_error_when_read(data_copy: Path, paper_trials) -> None:
    path = raw_dir("mnist", data_copy) / "train-images-idx3-ubyte"
    with open(path, "r+b") as handle:
        handle.truncate(5000)
    settings = paper_trials["mnist_5layer_swni"].with_overrides(
        {"train_examples": 40, "test_examples": 40}
    )
    with pytest.raises(DatasetError) as info:
        load_dataset(settings, np.random.RandomState(0), data_copy)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "5000 bytes" in message
    assert SPECS["mnist"].md5["train-images-idx3-ubyte"] in message


def test_missing_file_says_how_to_fetch(data_copy: Path, paper_trials) -> None:
    (raw_dir("mnist", data_copy) / LABELS).unlink()
    settings = paper_trials["mnist_5layer_swni"].with_overrides(
        {"train_examples": 40, "test_examples": 40}
    )
    with pytest.raises(DataError, match=f"lacks {LABELS}.*python -m eqp fetch mnist"):
        load_dataset(settings, np.random.RandomState(0), data_copy)


def test_a_file_changed_after_its_first_check_is_checked_again(
    data_copy: Path, paper_trials
) -> None:
    """Once per process, per file version: a later change is still caught."""
    settings = paper_trials["mnist_5layer_swni"].with_overrides(
        {"train_examples": 40, "test_examples": 40}
    )
    load_dataset(settings, np.random.RandomState(0), data_copy)
    path = raw_dir("mnist", data_copy) / LABELS
    _overwrite(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(DatasetError, match=LABELS):
        load_dataset(settings, np.random.RandomState(0), data_copy)


def test_fetch_repairs_a_bad_file_and_keeps_the_marker(data_copy: Path, mnist_root: Path) -> None:
    """The marker (the workflow's input of every MNIST trial) is left as it was, so a repair
    does not make Snakemake retrain anything: the data are the same bytes again."""
    folder = raw_dir("mnist", data_copy)
    _overwrite(folder / LABELS)
    marker = folder / "checksums.json"
    before = (marker.read_bytes(), marker.stat().st_mtime_ns)
    assert LABELS in stale_files("mnist", data_copy)
    proc = subprocess.run(
        [sys.executable, "-m", "eqp", "fetch", "mnist", "--data-dir", str(data_copy),
         "--source-dir", str(raw_dir("mnist", mnist_root))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sources._md5(folder / LABELS) == SPECS["mnist"].md5[LABELS]
    assert (marker.read_bytes(), marker.stat().st_mtime_ns) == before
    assert stale_files("mnist", data_copy) is None
    assert sorted(p.name for p in folder.iterdir()) == sorted([*sources.FILES, "checksums.json"])


def test_stale_files_trusts_untouched_files_without_hashing(data_copy: Path, monkeypatch) -> None:
    def refuse(path: Path) -> str:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(sources, "_md5", refuse)
    assert stale_files("mnist", data_copy) is None


def test_workflow_stops_in_one_line_on_a_corrupt_data_set(data_copy: Path, tmp_path: Path) -> None:
    root = tmp_path / "work"
    copy_workflow(root)
    config = load_yaml(REPO / "config" / "tiny.yaml")
    config["data_dir"] = str(data_copy)
    configfile = write_config(root / "config" / "checked.yaml", config)
    _overwrite(raw_dir("mnist", data_copy) / LABELS)
    proc = run_snakemake("-n", "--configfile", str(configfile), cwd=root, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    lines = [line for line in output.splitlines() if f"{LABELS}: md5 is" in line]
    assert len(lines) == 1, output
    assert "python -m eqp fetch mnist" in lines[0]
    assert "Traceback (most recent call last)" not in output
    record = json.loads((raw_dir("mnist", data_copy) / "checksums.json").read_text())
    assert record["md5"] == SPECS["mnist"].md5
