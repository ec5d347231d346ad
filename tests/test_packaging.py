"""The fused kernel is part of the package: built into wheels, optional without a compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _build_wheel(tmp_path: Path, env_extra: dict[str, str]) -> tuple[list[str], str]:
    names, log, _ = _build_wheel_file(tmp_path, env_extra)
    return names, log


def _build_wheel_file(tmp_path: Path, env_extra: dict[str, str]) -> tuple[list[str], str, Path]:
    """Build a wheel of a copy of the project (so no build output lands in the checkout)."""
    source = tmp_path / "src"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "eqp",
        source / "eqp",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    out = tmp_path / "wheel"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        env={**os.environ, **env_extra},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    (wheel,) = out.glob("eqp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist(), result.stderr, wheel


@pytest.mark.slow
def test_wheels_carry_the_kernel_and_install_without_a_compiler(tmp_path):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    names, _ = _build_wheel(tmp_path / "with", {})
    assert any(n.startswith("eqp/_settle") and n.endswith((".so", ".pyd")) for n in names)
    assert "eqp/engines/backends/c_kernel.py" in names

    names, log = _build_wheel(tmp_path / "without", {"CC": "false", "LDSHARED": "false"})
    assert not any(n.startswith("eqp/_settle") for n in names)
    assert "eqp/engines/backends/c_kernel.py" in names


@pytest.mark.slow
def test_the_installed_wheel_lists_the_trials_from_its_shipped_files(tmp_path):
    names, _, wheel = _build_wheel_file(tmp_path / "build", {})
    assert {"eqp/outputs/published_runs.json", "eqp/outputs/published_curves.json"} <= set(names)
    assert not any("/csrc/" in name for name in names)
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-P", *args], cwd=elsewhere, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run("-c", "import eqp; print(eqp.__file__)").startswith(str(installed))
    listed = run("-m", "eqp", "trials").splitlines()
    from eqp.outputs.published import load_published

    assert [line.split()[0] for line in listed] == list(load_published()["trials"])
    assert any("mnist_3layer_swni" in line and "epochs=200" in line for line in listed)
