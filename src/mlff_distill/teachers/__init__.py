"""Teachers: the slow, accurate models a student learns from.

`load_teacher` turns the ``teacher:`` section of the config into a `Teacher`:

- ``kind: fennol``: ``source: torchani`` builds FeNNol-PMC's ANI-1x ensemble from the NeuroChem
  files of the ``torchani==2.2.4`` wheel into the user cache (no download, no files at hand);
  ``source: fennol-pmc`` takes a FeNNol-PMC model by ``name`` from the models directory
  (``teacher.models_dir`` or ``$MLFF_DISTILL_MODELS_DIR``), the user cache, or a checked download;
  ``source: files`` takes the ``.fnx`` files listed in ``files`` (one model or an ensemble).
- ``kind: orb``: an Orb model by ``name``, with ``weights: pretrained`` (orb-models' loader and
  cache), a local ``checkpoint``, or ``weights: random`` (seeded; an "untrained teacher").
- ``kind: ase``: any ASE calculator, ``factory: package.module:callable`` called with ``kwargs``.

`check_structures_for` runs the checks of `mlff_distill.teachers.checks` with what the teacher
can handle, before any labeling starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ase import Atoms

from mlff_distill.settings import TeacherSettings
from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher
from mlff_distill.teachers.base import Teacher, TeacherCalculator, TeacherIdentity, TeacherOutput, default_cache_dir
from mlff_distill.teachers.checks import check_structures
from mlff_distill.teachers.fennol_ensemble import FennolEnsembleTeacher
from mlff_distill.teachers.fennol_pmc import load_fennol_pmc_teacher
from mlff_distill.teachers.neurochem import ani1x_cache_dir, build_ani1x_fnx

MODELS_DIR_ENV = "MLFF_DISTILL_MODELS_DIR"
# The config's precision names per kind: FeNNol runs float32 or float64 (JAX x64).
ORB_PRECISION = {
    "float32": "float32-high",
    "float32-high": "float32-high",
    "float32-highest": "float32-highest",
    "float64": "float64",
}


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
    raise ValueError(f"teacher.kind: {kind!r} is not one of fennol, orb, ase")


def _load_fennol(settings: TeacherSettings) -> Teacher:
    name, source = settings.name, settings.source
    if settings.precision not in ("float32", "float64"):
        raise ValueError(f"teacher.precision: FeNNol runs 'float32' or 'float64', not {settings.precision!r}")
    options = {"batch_size": settings.batch_size, "float64": settings.precision == "float64"}
    if source == "torchani":
        if name != "ani1x":
            raise ValueError(f"teacher.source: torchani provides only ani1x, not {name!r}; use source: fennol-pmc")
        files = build_ani1x_fnx(ani1x_cache_dir(cache_dir(settings.cache_dir)))
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


def check_structures_for(teacher: Teacher, structures: Sequence[Atoms], molecule_only: bool = False) -> None:
    """Raise a ValueError naming the first structure ``teacher`` cannot label, and why."""
    check_structures(
        structures,
        teacher.identity,
        molecule_only,
        getattr(teacher, "handles_small_cells", False),
        getattr(teacher, "handles_mixed_pbc", False),
    )


__all__ = [
    "Teacher",
    "TeacherCalculator",
    "TeacherIdentity",
    "TeacherOutput",
    "load_teacher",
    "check_structures_for",
    "models_dir",
    "cache_dir",
    "MODELS_DIR_ENV",
]
