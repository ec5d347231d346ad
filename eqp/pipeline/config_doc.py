"""The config as a user writes it: --config values typed, schema errors as one line, and the
parameter tables of config/README.md generated from the schema."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eqp.config.settings import (
    SettingsError,
    load_settings_yaml,
)


def typed_cli_values(value: Any) -> Any:
    """Values of ``snakemake --config k=v`` with their YAML types back.

    Snakemake parses ``--config seeds=[0,1]`` with YAML's BaseLoader, which keeps every
    nested scalar a string (``['0', '1']``); this turns such strings into the int, float
    (``1e-3`` included), bool or null they spell and leaves every other string alone.
    """
    import yaml

    if isinstance(value, Mapping):
        return {key: typed_cli_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [typed_cli_values(item) for item in value]
    if isinstance(value, str):
        try:
            parsed = load_settings_yaml(value)
        except yaml.YAMLError:
            return value
        if parsed is None or isinstance(parsed, (bool, int, float)):
            return parsed
    return value


def schema_error_message(error: Any) -> str:
    """One line for a jsonschema ValidationError: where in the config, and what is wrong."""
    path = ""
    for part in getattr(error, "absolute_path", []):
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    where = path or "top level"
    return f"invalid config at {where}: {getattr(error, 'message', error)}"


# -- the parameter tables of config/README.md, generated from the schema ----------------

DOC_BEGIN = (
    "<!-- parameter tables: generated from workflow/schemas/config.schema.yaml by "
    "`python -m eqp config-doc --write config/README.md`; edit the schema, not this -->"
)
DOC_END = "<!-- end of the generated parameter tables -->"


def load_schema(path: str | Path) -> dict[str, Any]:
    """The pipeline config's JSON schema (YAML)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return load_settings_yaml(handle)
    except FileNotFoundError as exc:
        raise SettingsError(
            f"schema {path} does not exist; run from the repository root or pass --schema"
        ) from exc


def _resolve(node: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """``node`` with a local ``$ref`` replaced by its definition (sibling keywords kept)."""
    while str(node.get("$ref", "")).startswith("#/$defs/"):
        target = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
    return node


def _literal(value: Any) -> str:
    import json

    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def _kind(node: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    """What a schema node allows, in words: 'integer >= 1', 'one of `a`, `b`', ..."""
    ref = node.get("$ref", "")
    if ref.endswith(("/settings", "/trial")):
        return "trial settings (table below)"
    node = _resolve(node, schema)
    if "enum" in node:
        return "one of " + ", ".join(_literal(v) for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_kind(option, schema) for option in node["oneOf"])
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = []
    for name in types:
        if name == "array":
            words.append(f"list, each {_kind(node.get('items', {}), schema)}")
        elif name == "object":
            extra = node.get("additionalProperties")
            words.append(
                f"mapping of names to {_kind(extra, schema)}"
                if isinstance(extra, Mapping)
                else "mapping"
            )
        else:
            words.append(name)
    text = " or ".join(words) or "any"
    limits = [
        f"{symbol} {node[key]}"
        for key, symbol in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
        )
        if key in node
    ]
    if "minItems" in node:
        count = node["minItems"]
        limits.append("non-empty" if count == 1 else f"{count} or more entries")
    if "pattern" in node:
        limits.append(f"matching `{node['pattern']}`")
    if node.get("uniqueItems"):
        limits.append("distinct")
    return f"{text} ({', '.join(limits)})" if limits else text


def _rows(
    properties: Mapping[str, Any], required: Sequence[str], prefix: str, schema: Mapping[str, Any]
) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, node in properties.items():
        name = f"{prefix}{key}"
        if "default" in node:
            default = _literal(node["default"])
        else:
            default = "required" if key in required else ""
        description = " ".join(str(node.get("description", "")).split())
        rows.append((f"`{name}`", _kind(node, schema), default, description))
        if "$ref" not in node and "properties" in node:
            rows += _rows(node["properties"], node.get("required", []), f"{name}.", schema)
    return rows


def _table(rows: Sequence[tuple[str, str, str, str]]) -> str:
    lines = ["| key | allowed values | default | description |", "|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def config_doc(schema: Mapping[str, Any]) -> str:
    """config/README.md's two parameter tables (pipeline keys, trial settings) as Markdown."""
    settings = schema["$defs"]["settings"]
    trial = schema["$defs"]["trial"]
    pipeline_rows = _rows(schema["properties"], schema.get("required", []), "", schema)
    settings_rows = _rows(settings["properties"], trial.get("required", []), "", schema)
    settings_rows = [
        (key, kind, "required in `trials`" if default == "required" else default, text)
        for key, kind, default, text in settings_rows
    ]
    return (
        "### Pipeline keys\n\n"
        + _table(pipeline_rows)
        + "\n### Trial settings\n\n"
        + " ".join(str(settings.get("description", "")).split())
        + "\n\n"
        + _table(settings_rows)
    )


def generated_section(text: str, source: str | Path = "config/README.md") -> str:
    """The part of ``text`` between the generated section's markers."""
    begin, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if begin < 0 or end < begin:
        raise SettingsError(
            f"{source} lacks the markers of the generated parameter tables; put the lines "
            f"{DOC_BEGIN!r} and {DOC_END!r} where the tables belong"
        )
    return text[begin + len(DOC_BEGIN) : end].strip("\n") + "\n"


def with_generated_section(text: str, tables: str, source: str | Path = "config/README.md") -> str:
    """``text`` with the generated section replaced by ``tables``."""
    generated_section(text, source)  # the markers must be there
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    return f"{head}{DOC_BEGIN}\n\n{tables}\n{DOC_END}{tail}"
