"""Teachers: the slow, accurate models a student learns from.

`load_teacher` turns the ``teacher:`` section of the config into a `Teacher`:

- ``kind: fennol``: ``source: torchani`` builds FeNNol-PMC's ANI-1x ensemble from the NeuroChem
  files of the ``torchani==2.2.4`` wheel (pip downloads it from the package index on first use)
  into the user cache;
  ``source: fennol-pmc`` takes a FeNNol-PMC model by ``name`` from the models directory
  (``teacher.models_dir`` or ``$MLFF_DISTILL_MODELS_DIR``), the user cache, or a checked download;
  ``source: files`` takes the ``.fnx`` files listed in ``files`` (one model or an ensemble).
- ``kind: orb``: an Orb model by ``name``, with ``weights: pretrained`` (orb-models' loader and
  cache), a local ``checkpoint``, or ``weights: random`` (seeded; an "untrained teacher").
- ``kind: sevennet``: SevenNet-0 (``name: 7net-0``), ``kind: chgnet``: CHGNet 0.3.0
  (``name: 0.3.0``): trained materials models whose weights ship in their wheels (the optional
  extra ``mlff-distill[materials]``), float32, on ``device``. Each offers one model, which a
  ``name`` left at the schema's default (a FeNNol name) also means; the species each was trained
  on come from its checkpoint. CHGNet labels only cells periodic in all three directions.
- ``kind: ase``: any ASE calculator, ``factory: package.module:callable`` called with ``kwargs``.

`check_structures_for` runs the checks of `mlff_distill.teachers.checks` with what the teacher
can handle, before any labeling starts.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Sequence

import yaml
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlff_distill.settings import SCHEMA_FILE, TeacherSettings
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher
from mlff_distill.teachers.base import Teacher, TeacherCalculator, TeacherIdentity, TeacherOutput, default_cache_dir
from mlff_distill.teachers.checks import check_structures
from mlff_distill.teachers.fennol_ensemble import FennolEnsembleTeacher
from mlff_distill.teachers.fennol_pmc import load_fennol_pmc_teacher
from mlff_distill.teachers.fennol_skin import FENNOL_SKIN, FennolSkinCalculator
from mlff_distill.teachers.neurochem import build_ani1x_fnx, torchani_resource_dir

MODELS_DIR_ENV = "MLFF_DISTILL_MODELS_DIR"
# The config's precision names per kind: FeNNol runs float32 or float64 (JAX x64).
ORB_PRECISION = {
    "float32": "float32-high",
    "float32-high": "float32-high",
    "float32-highest": "float32-highest",
    "float64": "float64",
}
# The model of each kind that ships its weights in its wheel (kinds with one model each).
MATERIALS_MODELS = {"sevennet": "7net-0", "chgnet": "0.3.0"}


def models_dir(configured: str | None) -> Path | None:
    """The configured models directory, else ``$MLFF_DISTILL_MODELS_DIR``, else None."""
    chosen = configured or os.environ.get(MODELS_DIR_ENV)
    return Path(chosen).expanduser().resolve() if chosen else None


def cache_dir(configured: str | None) -> Path:
    """The configured cache directory, else `default_cache_dir`."""
    return Path(configured).expanduser() if configured else default_cache_dir()


def load_teacher(settings: TeacherSettings) -> Teacher:
    """Build the teacher named by the config's ``teacher:`` section (see the module docstring)."""
    kind, name = settings.kind, settings.name
    precision = settings.precision
    if kind == "fennol":
        return _load_fennol(settings)
    if kind == "orb":
        # orb-models only when an Orb teacher is chosen: it is heavy to import
        from mlff_distill.teachers.orb import OrbTeacher

        return OrbTeacher(
            name,
            weights=settings.weights,
            seed=settings.seed,
            checkpoint=settings.checkpoint,
            precision=ORB_PRECISION[precision],
            device=settings.device,
            batch_size=settings.batch_size,
        )
    if kind == "ase":
        if not settings.factory:
            raise ValueError("teacher.factory: kind 'ase' needs 'package.module:callable'")
        return AseCalculatorTeacher(
            settings.factory,
            settings.kwargs,
            settings.species,
            settings.cutoff_A,
            name=f"ase/{name}",
        )
    if kind in MATERIALS_MODELS:
        return _load_materials(settings)
    raise ValueError(f"teacher.kind: {kind!r} is not one of fennol, orb, sevennet, chgnet, ase")


@cache
def _default_name() -> str:
    """The schema's default ``teacher.name`` (a FeNNol model name)."""
    return yaml.safe_load(SCHEMA_FILE.read_text())["properties"]["teacher"]["properties"]["name"]["default"]


def _load_materials(settings: TeacherSettings) -> Teacher:
    """SevenNet-0 or CHGNet 0.3.0; ``name`` is the kind's model, or left at the schema's default."""
    kind = settings.kind
    name = MATERIALS_MODELS[kind] if settings.name == _default_name() else settings.name
    if settings.precision != "float32":
        raise ValueError(f"teacher.precision: {kind} runs 'float32' only, not {settings.precision!r}")
    if kind == "sevennet":
        # only when chosen: it imports torch, and sevenn (an optional heavy dependency) when built
        from mlff_distill.teachers.sevennet import SevenNetTeacher, canonical_name

        if canonical_name(name) != MATERIALS_MODELS[kind]:
            raise ValueError(f"teacher.name: kind sevennet offers only 7net-0 (SevenNet-0), not {name!r}")
        return SevenNetTeacher(name, device=settings.device, batch_size=settings.batch_size)
    # only when chosen: it imports torch, and chgnet (an optional heavy dependency) when built
    from mlff_distill.teachers.chgnet import CHGNetTeacher

    if name != MATERIALS_MODELS[kind]:
        raise ValueError(f"teacher.name: kind chgnet offers only 0.3.0 (CHGNet 0.3.0), not {name!r}")
    if settings.molecule_only:
        raise ValueError("teacher.molecule_only: CHGNet labels only periodic cells; it cannot be molecule_only")
    return CHGNetTeacher(name, device=settings.device, batch_size=settings.batch_size)


def _load_fennol(settings: TeacherSettings) -> Teacher:
    name, source = settings.name, settings.source
    if settings.precision not in ("float32", "float64"):
        raise ValueError(f"teacher.precision: FeNNol runs 'float32' or 'float64', not {settings.precision!r}")
    options = {"batch_size": settings.batch_size, "float64": settings.precision == "float64"}
    if source == "torchani":
        if name != "ani1x":
            raise ValueError(f"teacher.source: torchani provides only ani1x, not {name!r}; use source: fennol-pmc")
        files = build_ani1x_fnx(cache_dir(settings.cache_dir))
        return FennolEnsembleTeacher(files, name="ani1x/torchani-2.2.4", **options)
    if source == "fennol-pmc":
        return load_fennol_pmc_teacher(name, models_dir(settings.models_dir), cache_dir(settings.cache_dir), **options)
    if source == "files":
        files = [Path(f).expanduser() for f in settings.files]
        missing = [str(f) for f in files if not f.is_file()]
        if not files or missing:
            raise FileNotFoundError(f"teacher.files: {missing or 'empty list'}: no such .fnx file")
        return FennolEnsembleTeacher(files, name=name, **options)
    raise ValueError(f"teacher.source: {source!r} is not one of torchani, fennol-pmc, files")


@dataclass
class TeacherImplementations:
    """The implementations of a teacher the speed table times, by name: ``labeling`` names the
    one that labels (`load_teacher`'s); ``others`` and ``other_members`` are ASE calculators of the
    same model (and of its member 0) run by other code; ``missing`` says why an implementation that
    exists for this teacher could not be built here (None when none is missing)."""

    labeling: str
    others: dict[str, Calculator] = field(default_factory=dict)
    other_members: dict[str, Calculator] = field(default_factory=dict)
    missing: str | None = None


def teacher_implementations(settings: TeacherSettings) -> TeacherImplementations:
    """The implementations of the teacher of ``settings`` beside its labeling path: for FeNNol
    teachers, FeNNol's MD neighbour list reused with a skin (`mlff_distill.teachers.fennol_skin`,
    ``FENNOL_SKIN``); for the ANI-1x ensemble (``kind: fennol`` from ``source: torchani``, or
    FeNNol-PMC's ``ani1x``, the same weights: see tests/teachers/test_neurochem.py) also torchani
    2.9 with its cell list (`mlff_distill.teachers.torchani_runtime`), and that for one member; for
    other teachers, their own one only."""
    if settings.kind != "fennol":
        return TeacherImplementations(labeling=settings.kind)
    others: dict[str, Calculator] = {FENNOL_SKIN: FennolSkinCalculator(functools.partial(load_teacher, settings))}
    ani1x = settings.name == "ani1x" and settings.source in ("torchani", "fennol-pmc")
    if not ani1x:
        return TeacherImplementations(labeling="fennol", others=others)
    # only for this teacher: it imports torchani 2.9
    from mlff_distill.teachers.torchani_runtime import CELL_LIST, ani1x_cell_list_calculator, torchani_runtime_missing

    missing = torchani_runtime_missing()
    if missing:
        return TeacherImplementations(labeling="fennol", others=others, missing=f"{CELL_LIST}: {missing}")
    resources = torchani_resource_dir(cache_dir(settings.cache_dir))
    float64 = settings.precision == "float64"
    return TeacherImplementations(
        labeling="fennol",
        others={**others, CELL_LIST: ani1x_cell_list_calculator(resources, float64=float64)},
        other_members={CELL_LIST: ani1x_cell_list_calculator(resources, member=0, float64=float64)},
    )


def teacher_md_calculator(teacher: Teacher, implementations: TeacherImplementations) -> tuple[str, Calculator]:
    """The name and an ASE calculator of ``teacher``'s fastest implementation in MD, as measured on
    this project's machines (README, "Measured"): torchani 2.9's cell list where it runs, else
    FeNNol's skin list, else the labeling path (`TeacherCalculator`)."""
    # torchani_runtime imports torch and torchani; only this path needs them
    from mlff_distill.teachers.torchani_runtime import CELL_LIST

    for name in (CELL_LIST, FENNOL_SKIN):
        if name in implementations.others:
            return name, implementations.others[name]
    return implementations.labeling, TeacherCalculator(teacher)


def check_structures_for(teacher: Teacher, structures: Sequence[Atoms], molecule_only: bool = False) -> None:
    """Raise a ValueError naming the first structure ``teacher`` cannot label, and why."""
    check_structures(
        structures,
        teacher.identity,
        molecule_only,
        getattr(teacher, "handles_small_cells", False),
        getattr(teacher, "handles_mixed_pbc", False),
        getattr(teacher, "periodic_only", False),
    )


__all__ = [
    "Teacher",
    "TeacherCalculator",
    "TeacherIdentity",
    "TeacherOutput",
    "load_teacher",
    "teacher_implementations",
    "teacher_md_calculator",
    "TeacherImplementations",
    "check_structures_for",
    "models_dir",
    "cache_dir",
    "MODELS_DIR_ENV",
]
