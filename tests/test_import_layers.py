"""eqp's sub-packages import only downward, so the design stays readable from the imports.

Every import of an eqp module is counted, at module level or inside a function, read from
the source (nothing is imported here). A module may import its own sub-package or a lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

EQP = Path(__file__).resolve().parents[1] / "eqp"

# Lowest first: each of eqp's sub-packages (and its top-level modules) in one layer. `outputs`
# sits low because training writes its trial folder through outputs.records; it imports no torch.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("config", frozenset({"config"})),
    ("outputs", frozenset({"outputs"})),
    ("data", frozenset({"data"})),
    ("model", frozenset({"model"})),
    ("engines", frozenset({"engines"})),
    ("training", frozenset({"training"})),
    ("pipeline", frozenset({"pipeline"})),
    ("studies", frozenset({"studies"})),
    ("interfaces", frozenset({"api", "datasets", "cli", "__main__", "__init__"})),
)


def _layer_of() -> dict[str, int]:
    return {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def imported_modules(source: str) -> set[str]:
    """The eqp modules a source file imports, by name (``eqp.x``, ``.x`` or ``from . import
    x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError("eqp's modules import each other absolutely (eqp.x.y)")
            if node.module == "eqp" or (node.module or "").startswith("eqp."):
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
    """Source text by layer key: a sub-package's files joined, a top-level module alone."""
    found: dict[str, str] = {}
    for path in sorted(EQP.rglob("*.py")):
        parts = path.relative_to(EQP).parts
        key = parts[0] if len(parts) > 1 else path.stem
        found[key] = found.get(key, "") + "\n" + path.read_text()
    return found


def test_every_package_has_a_layer():
    unplaced = sorted(set(_sources()) - set(_layer_of()))
    assert not unplaced, f"place these in LAYERS: {', '.join(unplaced)}"


def test_imports_point_only_downward():
    wrong = upward_imports(_sources())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_an_upward_import_is_caught():
    sources = _sources()
    sources["config"] += "\n\ndef _late():\n    from eqp.outputs.figures import fig4\n"
    sources["outputs"] += "\nimport eqp.training.trainer\n"
    assert upward_imports(sources) == [
        "config (config) imports outputs (outputs)",
        "outputs (outputs) imports training (training)",
    ]
