"""environment.yml lists the same Python dependencies, with the same pins, as pyproject.toml.

Compared: [project].dependencies plus every optional extra (``dev``) against the ``pip:``
section of environment.yml, minus the ``-e .`` line that installs eqp itself. Names are
compared PEP 503-normalised and specifiers without spaces, so only a real difference fails.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def normalise(requirement: str) -> tuple[str, str]:
    match = REQUIREMENT.match(requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    specifier = ",".join(sorted(part.strip() for part in match.group(3).split(",") if part))
    return name, specifier.replace(" ", "")


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def environment() -> dict:
    with open(REPO / "environment.yml") as handle:
        return yaml.safe_load(handle)


def pip_section(env: dict) -> list[str]:
    sections = [item["pip"] for item in env["dependencies"] if isinstance(item, dict)]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return [str(line) for line in sections[0]]


def test_environment_lists_the_pyproject_dependencies_with_the_same_pins() -> None:
    project = pyproject()["project"]
    expected = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        expected += extra
    listed = [line for line in pip_section(environment()) if not line.startswith("-e")]

    want = dict(normalise(r) for r in expected)
    have = dict(normalise(r) for r in listed)
    assert len(have) == len(listed), "environment.yml lists a package twice"
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = {n: (want[n], have[n]) for n in set(want) & set(have) if want[n] != have[n]}
    assert not missing, f"in pyproject.toml but not environment.yml: {missing}"
    assert not extra, f"in environment.yml but not pyproject.toml: {extra}"
    assert not differ, f"pins differ (pyproject, environment.yml): {differ}"


def test_environment_installs_eqp_and_a_python_that_pyproject_allows() -> None:
    env = environment()
    assert "-e ." in pip_section(env), "environment.yml must install eqp itself (-e .)"
    conda = [item for item in env["dependencies"] if isinstance(item, str)]
    assert "pip" in conda
    pythons = [item for item in conda if re.match(r"python\b", item)]
    assert len(pythons) == 1, "pin exactly one python in environment.yml"
    version = re.search(r"(\d+)\.(\d+)", pythons[0])
    assert version, pythons[0]
    minimum = re.search(r">=\s*(\d+)\.(\d+)", pyproject()["project"]["requires-python"])
    assert minimum
    assert tuple(map(int, version.groups())) >= tuple(map(int, minimum.groups()))


def test_normalise_ignores_spelling_but_not_pins() -> None:
    assert normalise("scikit_learn >= 1.4") == normalise("scikit-learn>=1.4")
    assert normalise("PyYAML>=6.0") == normalise("pyyaml>=6.0")
    assert normalise("torch==2.14.1") != normalise("torch==2.14.0")
