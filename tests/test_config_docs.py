"""config/README.md documents every schema key, with the schema's own default (the one source of defaults)."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "config" / "README.md"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
FREE_FORM = "label.scheduler."  # keys without defaults here are free-form options, described in prose


def documented_rows() -> dict[str, tuple[str, str]]:
    """``{section.key: (unit, default as written)}`` from the rows ``| `key` | unit | `default` | meaning |``
    under the headings ``## Top level`` and ``## `section```."""
    rows, section = {}, None
    for line in README.read_text().splitlines():
        if line.startswith("## "):
            heading = re.fullmatch(r"## `(\w+)`", line)
            section = heading.group(1) + "." if heading else ("" if line == "## Top level" else None)
        elif section is not None and line.startswith("| `"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            assert len(cells) == 4, f"not four cells: {line}"
            key = section + cells[0].strip("`")
            assert key not in rows, f"{key} documented twice"
            assert re.fullmatch(r"`[^`]*`", cells[2]), f"{key}: the default is not one `value`: {cells[2]}"
            rows[key] = (cells[1], cells[2][1:-1])
    return rows


def schema_defaults(node: dict, prefix: str = "") -> dict[str, object]:
    """``{dotted key: default}`` for every leaf of the schema (objects with properties are walked)."""
    defaults = {}
    for name, sub in node.get("properties", {}).items():
        key = prefix + name
        if "properties" in sub:
            defaults.update(schema_defaults(sub, key + "."))
        elif "default" in sub:
            defaults[key] = sub["default"]
        else:
            assert key.startswith(FREE_FORM), f"{key}: a schema key without a default"
    return defaults


def same(a: object, b: object) -> bool:
    """Equal values of equal types (so 1 is not true, 300 is not 300.0)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_every_documented_default_is_the_schema_default_and_every_key_is_documented():
    documented = documented_rows()
    defaults = schema_defaults(yaml.safe_load(SCHEMA.read_text()))
    assert sorted(set(defaults) - set(documented)) == [], "schema keys missing from config/README.md"
    assert sorted(set(documented) - set(defaults)) == [], "config/README.md documents keys not in the schema"
    written = {key: text for key, (_, text) in documented.items()}
    wrong = {k: (text, defaults[k]) for k, text in written.items() if not same(yaml.safe_load(text), defaults[k])}
    assert wrong == {}, "documented default (as written) != schema default"
    assert [key for key, (unit, _) in documented.items() if not unit] == [], "keys without a unit"
