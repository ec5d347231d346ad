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
    (wheel,) = out.glob("eqp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist(), result.stderr


@pytest.mark.slow
def test_wheels_carry_the_kernel_and_install_without_a_compiler(tmp_path):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    names, _ = _build_wheel(tmp_path / "with", {})
    assert any(n.startswith("eqp/_settle") and n.endswith((".so", ".pyd")) for n in names)
    assert "eqp/native.py" in names

    names, log = _build_wheel(tmp_path / "without", {"CC": "false", "LDSHARED": "false"})
    assert not any(n.startswith("eqp/_settle") for n in names)
    assert "eqp/native.py" in names
