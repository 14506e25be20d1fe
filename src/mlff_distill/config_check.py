"""Short, key-naming messages for a config that does not match the workflow's schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml


def config_errors(config: dict, schema_file: Path) -> list[str]:
    """One line per problem, e.g. ``train.epochz: Additional properties are not allowed``."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        key = ".".join(str(part) for part in error.absolute_path) or "<top level>"
        problems.append(f"{key}: {error.message}")
    return problems
