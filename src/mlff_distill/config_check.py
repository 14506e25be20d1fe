"""Short, key-naming messages for a config that does not match the workflow's schema, or whose
keys contradict each other."""

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
    return problems + contradictions(config)


def contradictions(config: dict) -> list[str]:
    """Keys valid on their own that cannot work together, one line each."""
    train, label = config.get("train") or {}, config.get("label") or {}
    problems = []
    weight = train.get("hessian_weight", 0)
    if isinstance(weight, (int, float)) and weight > 0 and label.get("hessian_step_A") is None:
        problems.append(
            f"train.hessian_weight: {weight} needs the teacher's Hessian-vector labels; "
            "set label.hessian_step_A (e.g. 0.01 Angstrom) or the weight to 0"
        )
    modes = (config.get("sample") or {}).get("normal_modes") or {}
    counts, temperatures = modes.get("structures_per_seed"), modes.get("temperatures_K", [300])
    if isinstance(counts, list) and isinstance(temperatures, list) and len(counts) != len(temperatures):
        problems.append(
            f"sample.normal_modes.structures_per_seed: {len(counts)} counts for "
            f"{len(temperatures)} temperatures_K; give one count per temperature or one "
            "count for all"
        )
    return problems
