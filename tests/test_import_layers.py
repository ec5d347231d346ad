"""The modules of eqp import only downward, so the design stays readable from the imports.

Every import of an eqp module is counted, at module level or inside a function, read from
the source (nothing is imported here). A module may import its own layer or a lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

EQP = Path(__file__).resolve().parents[1] / "eqp"

# Lowest first. One name per module of eqp/; a new module must be placed here.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("config", frozenset({"settings", "stacking"})),
    ("folder format", frozenset({"records"})),
    ("data", frozenset({"data", "sources"})),
    ("model", frozenset({"topology", "network"})),
    (
        "engines",
        frozenset({"native", "kernels", "graphs", "triton_step", "dynamics", "converged"}),
    ),
    ("training", frozenset({"trainer", "ensemble"})),
    ("outputs", frozenset({"published", "labels", "table", "figures", "runs", "progress"})),
    ("pipeline", frozenset({"pipeline", "snapshot"})),
    ("studies", frozenset({"bench", "bench_cuda", "equivalence"})),
    ("command line", frozenset({"cli", "__main__", "__init__"})),
)


def _layer_of() -> dict[str, int]:
    return {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def imported_modules(source: str) -> set[str]:
    """The eqp modules a source file imports, by name (``eqp.x``, ``.x`` or ``from . import
    x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "eqp" or (node.module or "").startswith("eqp."):
                module = node.module or ""
                if node.level == 0:
                    module = module.removeprefix("eqp").removeprefix(".")
                if module:
                    found.add(module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("eqp.")
            )
    return found


def upward_imports(modules: dict[str, str]) -> list[str]:
    """Every import of a higher layer, as 'a (layer) imports b (layer)'."""
    layer = _layer_of()
    names = [name for name, _ in LAYERS]
    wrong = []
    for module, source in sorted(modules.items()):
        for target in sorted(imported_modules(source) & set(layer)):
            if layer[target] > layer[module]:
                wrong.append(
                    f"{module} ({names[layer[module]]}) imports {target} ({names[layer[target]]})"
                )
    return wrong


def _sources() -> dict[str, str]:
    return {path.stem: path.read_text() for path in EQP.glob("*.py")}


def test_every_module_has_a_layer():
    unplaced = sorted(set(_sources()) - set(_layer_of()))
    assert not unplaced, f"place these modules in LAYERS: {', '.join(unplaced)}"


def test_imports_point_only_downward():
    wrong = upward_imports(_sources())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_an_upward_import_is_caught():
    sources = _sources()
    sources["settings"] += "\n\ndef _late():\n    from .figures import fig4\n"
    sources["records"] += "\nimport eqp.trainer\n"
    assert upward_imports(sources) == [
        "records (folder format) imports trainer (training)",
        "settings (config) imports figures (outputs)",
    ]
