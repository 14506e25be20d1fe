"""The student's accuracy against its teacher on labeled structures, and the evaluate stage's
other measurements on the test split.

Accuracy (`mlff_distill.evaluation.metrics`): energy per atom (eV/atom), forces (eV/Angstrom),
stress (GPa) for periodic structures, per element, beside the teacher ensemble's own spread.
Speed on the test structures: teacher and student timed in one process, one structure per call as
in MD (energy and forces, neighbour list included), after a warm-up call on every structure; the
median over repeats, in seconds per structure.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import zarr
from ase import Atoms

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation.metrics import (
    energy_force_errors,
    ensemble_spread,
    per_species_force_errors,
    stress_errors,
)
from mlff_distill.store import EXCLUDED_CODE, FAILURES_FILE, SPLIT_CODES, store_attrs
from mlff_distill.tracking import flatten


def accuracy(
    reference: LabeledArrays,
    predictions: dict[str, np.ndarray],
    energy_std_eV: np.ndarray | None = None,
    forces_std_eV_per_A: np.ndarray | None = None,
    n_members: int | None = None,
) -> dict[str, Any]:
    """Flat error metrics (see `metrics`), plus ``per_species`` and ``ensemble_spread`` dicts.

    ``predictions``: ``energy_eV``, ``forces_eV_per_A`` and optionally ``stress_eV_per_A3``; the
    teacher ensemble's spread (``*_std``, over its ``n_members``) goes to `ensemble_spread`.
    """
    result: dict[str, Any] = prediction_errors(reference, predictions)
    result["per_species"] = per_species_force_errors(reference, predictions["forces_eV_per_A"])
    result["ensemble_spread"] = ensemble_spread(reference, energy_std_eV, forces_std_eV_per_A, n_members)
    return result


def prediction_errors(reference: LabeledArrays, predictions: dict[str, np.ndarray]) -> dict[str, float]:
    """`energy_force_errors` (eV/atom, eV/Angstrom, ``force_rel_rmse``) of ``predictions``
    (``energy_eV``, ``forces_eV_per_A``, optionally ``stress_eV_per_A3``) against ``reference``,
    with the `stress_errors` where both have a finite stress."""
    errors = energy_force_errors(reference, predictions["energy_eV"], predictions["forces_eV_per_A"])
    errors.update(stress_errors(reference.stress_eV_per_A3, predictions.get("stress_eV_per_A3")))
    return errors


def errors_by_round(test: LabeledArrays, predictions_by_round: Sequence[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """The test errors of each round's student, round 0 first, so that what the on-policy rounds did
    shows: ``round`` and the `prediction_errors`. ``predictions_by_round[k]``: round k's student on
    ``test`` (as for `accuracy`)."""
    return [{"round": k, **prediction_errors(test, predictions)} for k, predictions in enumerate(predictions_by_round)]


def accuracy_by_target(
    test: LabeledArrays,
    predictions: dict[str, np.ndarray],
    infos: Sequence[dict],
    forces_std_eV_per_A: np.ndarray | None = None,
    n_members: int | None = None,
) -> list[dict[str, Any]]:
    """The student's errors on the test structures of each target and temperature.

    ``infos[i]``: the sampled structure's ``info`` of test structure ``i`` (its ``target`` and
    ``temperature_K``; structures without a ``target`` count as target None, without a
    temperature as temperature None). One row per (target, temperature_K), targets by name then
    None, temperatures ascending then None: ``target``, ``temperature_K``, ``n_structures`` and
    the `energy_force_errors` of those structures (``force_rel_rmse``, ``force_mae_eV_per_A``,
    ``energy_mae_per_atom_eV``, ...), with the `stress_errors` (GPa) where they have stress labels
    and predictions; with a teacher ensemble's force spread (``forces_std_eV_per_A [M, 3]`` over
    ``n_members``), also ``ensemble_force_rel_rmse_of_the_mean`` (`ensemble_spread`'s
    ``force_rel_rmse_of_the_mean`` of those structures).
    """
    if len(infos) != test.n_structures:
        raise ValueError(f"infos: {len(infos)} entries for {test.n_structures} test structures")
    groups: dict[tuple, list[int]] = collections.defaultdict(list)
    for index, info in enumerate(infos):
        temperature = info.get("temperature_K")
        groups[(info.get("target"), None if temperature is None else float(temperature))].append(index)
    ordered = sorted(groups, key=lambda key: (key[0] is None, key[0] or "", key[1] is None, key[1] or 0.0))
    rows = []
    for target, temperature_K in ordered:
        indices = groups[(target, temperature_K)]
        stress = predictions.get("stress_eV_per_A3")
        chosen = {
            "energy_eV": np.asarray(predictions["energy_eV"])[indices],
            "forces_eV_per_A": np.asarray(predictions["forces_eV_per_A"])[test.atom_rows(indices)],
            "stress_eV_per_A3": None if stress is None else np.asarray(stress)[indices],
        }
        rows.append(
            {
                "target": target,
                "temperature_K": temperature_K,
                "n_structures": len(indices),
                **prediction_errors(test.subset(indices), chosen),
            }
        )
        if forces_std_eV_per_A is not None:
            spread = ensemble_spread(
                test.subset(indices), None, np.asarray(forces_std_eV_per_A)[test.atom_rows(indices)], n_members
            )
            if "force_rel_rmse_of_the_mean" in spread:
                rows[-1]["ensemble_force_rel_rmse_of_the_mean"] = spread["force_rel_rmse_of_the_mean"]
    return rows


def seconds_per_structure(compute: Callable[[Atoms], object], structures: Sequence[Atoms], repeats: int) -> float:
    """Median over ``repeats`` of the mean time of one call per structure (after a warm-up)."""
    for atoms in structures:
        compute(atoms)
    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        for atoms in structures:
            compute(atoms)
        totals.append(time.perf_counter() - start)
    return float(np.median(totals)) / len(structures)


def structure_kinds(sample_indices: Sequence[int], sampled: Sequence[Atoms]) -> list[str]:
    """A label per structure: its sampling strategy, with the temperature where it has one
    ("md 300 K", "normal-modes 1000 K", "rattle"), from the sampled structures
    (``sampled[sample_index].info``)."""
    kinds = []
    for index in sample_indices:
        info = sampled[int(index)].info
        temperature = f" {info['temperature_K']:g} K" if "temperature_K" in info else ""
        kinds.append(f"{info.get('strategy', 'unknown')}{temperature}")
    return kinds


def split_column(store: Path, split: str, name: str) -> np.ndarray:
    """The per-structure array ``structures/<name>`` of the store (``energy_std_eV``, the teacher
    ensemble's energy spread in eV; ``sample_index``, the row in the sampled structures file) for
    the structures of ``split``, in store order."""
    group = zarr.open_group(store=str(store), mode="r", zarr_format=3)
    keep = group["structures/split"][...] == SPLIT_CODES[split]
    return group[f"structures/{name}"][...][keep]


def provenance(store: Path, sampled: Sequence[Atoms] | None) -> dict[str, Any]:
    """Where the data came from: store path and attributes, structures per split, and the sampled
    structures (``info["strategy"]`` of each) per strategy."""
    attrs = store_attrs(store)
    splits = zarr.open_group(store=str(store), mode="r", zarr_format=3)["structures/split"][...]
    facts: dict[str, Any] = {
        "label store": str(Path(store).resolve()),
        "structures file": attrs.get("structures_file"),
        "structures labeled": attrs.get("n_structures"),
        "atoms labeled": attrs.get("n_atoms"),
        "config hash": attrs.get("config_hash"),
    }
    failures = Path(store).resolve().parent / FAILURES_FILE
    if failures.is_file():
        facts["structures the teacher failed on"] = len(json.loads(failures.read_text()))
    facts["structures per split"] = {name: int(np.sum(splits == code)) for name, code in SPLIT_CODES.items()}
    if attrs.get("max_force_eV_per_A") is not None:
        facts[f"structures excluded (teacher force >= {attrs['max_force_eV_per_A']:g} eV/A)"] = int(
            np.sum(splits == EXCLUDED_CODE)
        )
    if sampled is not None:
        strategies = collections.Counter(a.info.get("strategy", "unknown") for a in sampled)
        facts["sampled structures per strategy"] = dict(sorted(strategies.items()))
    facts["package versions"] = attrs.get("package_versions") or {}
    return facts


def time_test_structures(teacher: Any, calculator: Any, structures: Sequence[Atoms], repeats: int) -> dict[str, float]:
    """Teacher and student (a `StudentCalculator`) in seconds per structure by
    `seconds_per_structure`, energy and forces one structure per call, and the ratio."""
    teacher_s = seconds_per_structure(lambda a: teacher.compute([a]), structures, repeats)

    def student_call(atoms: Atoms) -> None:
        calculator.calculate(atoms, ["energy", "forces"])

    torch.set_num_threads(1)  # one thread: fastest for molecules; the tune stage times so too
    student_s = seconds_per_structure(student_call, structures, repeats)
    return {
        "n_timed": len(structures),
        "teacher_s_per_structure": teacher_s,
        "student_s_per_structure": student_s,
        "speedup": teacher_s / student_s,
    }


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics`` under flat names (``per_species.H.force_mae_eV_per_A``,
    ``md_validation.rdf.<scalar>``), the per-target rows under ``<key>.<target>.<T>K.<column>``
    (``accuracy_by_target.water.300K.force_rel_rmse``, ``target_nvt.water.350K.time_ps``; rows
    without a target or temperature under ``none``) and each round's test errors under
    ``rounds.<k>.<column>``; the gates' rows are left to `mlff_distill.evaluation.gates.gate_metrics`."""
    rows_keys = ("accuracy_by_target", "target_nvt")
    flat = flatten({k: v for k, v in metrics.items() if k not in ("gates", "speed", "rounds", *rows_keys)})
    for row in metrics.get("rounds") or []:
        flat.update({f"rounds.{row['round']}.{k}": v for k, v in row.items() if k != "round"})
    for key in rows_keys:
        for row in metrics.get(key) or []:
            temperature = "none" if row.get("temperature_K") is None else f"{row['temperature_K']:g}K"
            prefix = f"{key}.{row.get('target') or 'none'}.{temperature}."
            flat.update({prefix + k: v for k, v in row.items() if k not in ("target", "temperature_K")})
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
