"""Typed settings of each config section, built from the validated config.

The config schema (``workflow/schemas/config.schema.yaml``, shipped in the package as
``config.schema.yaml``) is the one source of defaults: `complete_config` fills them in, and these
dataclasses carry none of their own. Each stage builds the settings of the sections it reads
(``build(TrainSettings, train, "train")``) and library functions take those objects or plain
arguments. Units are in the field names (``_A`` Angstrom, ``_K`` kelvin, ``_fs`` femtoseconds,
``_eV`` electronvolt).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, TypeVar

from snakemake.utils import validate

SCHEMA_FILE = Path(__file__).with_name("config.schema.yaml")
T = TypeVar("T")


def complete_config(partial: Mapping[str, Any]) -> dict:
    """``partial`` checked against the schema, with every default filled in (a new dict)."""
    config = copy.deepcopy(dict(partial))
    validate(config, str(SCHEMA_FILE))
    return config


def build(cls: type[T], section: Mapping[str, Any], key: str) -> T:
    """``cls`` from one validated config section; nested settings are built too. ``key`` (the
    section's path in the config, e.g. ``"sample.md"``) names what is missing or unknown."""
    names = [field.name for field in dataclasses.fields(cls)]
    unknown, missing = sorted(set(section) - set(names)), [n for n in names if n not in section]
    if unknown or missing:
        raise ValueError(
            f"{key}: unknown keys {unknown}, missing keys {missing} "
            "(build settings from a config completed by complete_config)"
        )
    hints = typing.get_type_hints(cls)
    values = {
        name: build(hints[name], section[name], f"{key}.{name}")
        if dataclasses.is_dataclass(hints[name])
        else section[name]
        for name in names
    }
    return cls(**values)


def section_settings(cls: type[T], section: str, overrides: Optional[Mapping[str, Any]] = None) -> T:
    """The settings of config section ``section`` with the schema's defaults under ``overrides``."""
    return build(cls, complete_config({section: dict(overrides or {})})[section], section)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a config (or part of one) as canonical JSON (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MLflowSettings:
    tracking_uri: Optional[str]  # null: sqlite:///<abs results_dir>/mlflow.db
    experiment: str


@dataclass(frozen=True)
class TeacherSettings:
    """The ``teacher:`` section; which keys apply depends on ``kind`` (config/README.md)."""

    kind: str
    name: str
    source: str
    files: list
    models_dir: Optional[str]
    cache_dir: Optional[str]
    weights: str
    seed: int
    checkpoint: Optional[str]
    precision: str
    device: str
    factory: Optional[str]
    kwargs: dict
    species: Optional[list]
    cutoff_A: Optional[float]
    molecule_only: bool
    batch_size: int


@dataclass(frozen=True)
class TargetMDSettings:
    trajectories: int
    relax_steps: int
    equilibration_steps: int
    frames_per_trajectory: int
    steps_between_frames: int
    timestep_fs: float
    friction_per_fs: float


@dataclass(frozen=True)
class TargetRattleSettings:
    structures_per_frame: int
    sigma_A: list  # [low, high], Angstrom
    max_strain: float


@dataclass(frozen=True)
class ClusterSettings:
    per_frame: int
    sizes: list  # molecules per cluster


@dataclass(frozen=True)
class TargetTestSettings:
    trajectories: int
    equilibration_steps: int
    frames_per_trajectory: int
    steps_between_frames: int


@dataclass(frozen=True)
class TargetSettings:
    """The ``target:`` section: the systems (dicts: name, temperatures_K and one of molecule, box with
    density_g_per_cm3, file) and how training and test data are made from them."""

    systems: list
    min_distance_A: float
    md: TargetMDSettings
    rattle: TargetRattleSettings
    clusters: ClusterSettings
    test: TargetTestSettings


@dataclass(frozen=True)
class RoundTrainSettings:
    epochs: int
    learning_rate: float
    warmup_epochs: int
    max_minutes: Optional[float]


@dataclass(frozen=True)
class ExploreSettings:
    """The ``on_policy:`` section less its ``train:``: the student's MD in each round (all the
    explore stage reads)."""

    starts: int
    steps: int
    frame_every: int
    timestep_fs: float
    friction_per_fs: float
    replicate: int
    max_force_eV_per_A: float
    min_distance_A: float
    frames_before_blowup: int
    start_from: str  # "teacher-md" or "fresh"
    contact_fraction: Optional[float]


@dataclass(frozen=True)
class OnPolicySettings(ExploreSettings):
    """The ``on_policy:`` section: the student's MD in each round and the rounds' training."""

    train: RoundTrainSettings


@dataclass(frozen=True)
class RattleSettings:
    structures_per_seed: int
    sigma_A: list  # [low, high], Angstrom


@dataclass(frozen=True)
class MDSettings:
    temperatures_K: list
    timestep_fs: float
    friction_per_fs: float
    equilibration_steps: int
    frames_per_trajectory: int
    steps_between_frames: int


@dataclass(frozen=True)
class RattleStrainSettings:
    structures_per_seed: int
    sigma_A: list
    max_strain: float


@dataclass(frozen=True)
class VacancySettings:
    structures_per_seed: int
    max_vacancies: int
    sigma_A: list


@dataclass(frozen=True)
class RattleRelaxSettings:
    generations: int
    children_per_generation: int
    sigma_A: float
    relax_steps: int
    temperature_K: float


@dataclass(frozen=True)
class NormalModeSettings:
    structures_per_seed: Any  # one count, or one per temperature
    temperatures_K: list
    delta_A: float


@dataclass(frozen=True)
class SampleSettings:
    molecules: list
    crystals: list  # {formula, structure, a_A, cubic} each
    seed_files: list
    test_files: list
    min_cell_length_A: float
    rattle: RattleSettings
    md: MDSettings
    rattle_strain: RattleStrainSettings
    vacancies: VacancySettings
    rattle_relax: RattleRelaxSettings
    normal_modes: NormalModeSettings
    duplicate_tolerance_A: Optional[float]
    max_force_eV_per_A: Optional[float]
    select_by_disagreement: Optional[int]
    min_distance_A: float
    val_fraction: float
    test_fraction: float


@dataclass(frozen=True)
class LabelSettings:
    shard_size: int
    workers: Optional[int]
    max_failed_fraction: float
    max_force_eV_per_A: Optional[float]
    hessian_step_A: Optional[float]
    scheduler: dict


@dataclass(frozen=True)
class StudentSettings:
    """The student's size; its keyword arguments (`mlff_distill.student.StudentPotential`)."""

    cutoff_A: float
    n_features: int
    n_radial: int
    n_interactions: int
    contact_wall_eV_per_A3: float
    angular_order: int  # 1: PaiNN alone; 2, 3: plus the angular moments of those orders
    angular_channels: int


@dataclass(frozen=True)
class TrainSettings:
    """The ``train:`` section; what each key does: config/README.md and `train_student`."""

    epochs: int
    batch_size: int
    learning_rate: float
    final_lr_fraction: float
    weight_decay: float
    energy_weight: float
    on_policy_energy_weight: float
    calibrate_on_target_md: bool
    force_weight: float
    stress_weight: float
    hessian_weight: float
    warmup_epochs: int
    ema_decay: float
    grad_clip: float
    patience: Optional[int]
    max_minutes: Optional[float]
    resume: bool
    in_memory_max_GB: float
    shuffle_buffer_blocks: int
    threads: Optional[int]
    processes: int
    compile: bool


@dataclass(frozen=True)
class TuneSettings:
    try_compile: bool
    repeats: int
    export_aoti: bool  # AOTInductor package of the final student, tune/student.pt2
    graph_atoms: list


@dataclass(frozen=True)
class SpeedSettings:
    sizes: list  # atoms per timing system
    warmup: int
    all_cores: bool  # also time every implementation on all the evaluate job's cores
    accuracy_frames: int  # teacher-MD frames of each target's timed system its accuracy is measured on
    skip_slower_than: Optional[float]  # an implementation this many times the fastest's time is not timed larger


@dataclass(frozen=True)
class MDValidationSettings:
    timestep_fs: float
    temperature_K: float
    nve_steps: int
    nve_starts: int
    teacher_nve_starts: int
    nvt_steps: int
    sample_every: int
    rdf_r_max_A: float
    rdf_bins: int
    teacher_budget_s: float
    nvt_ps: float
    all_temperatures: bool
    contact_fraction: Optional[float]
    teacher_nvt_ps: float


@dataclass(frozen=True)
class MeasurementSettings:
    """What the evaluate stage reads: ``evaluate:`` without its verdict keys (`VERDICT_KEYS`)."""

    timing_structures: int
    timing_repeats: int
    symmetry_structures: int
    speed: SpeedSettings
    md: MDValidationSettings


@dataclass(frozen=True)
class EvaluateSettings(MeasurementSettings):
    """The whole ``evaluate:`` section: the measurements and the verdict on them (the report stage)."""

    gates: dict  # metric -> bound (None: off)
    strict: bool


# The keys of ``evaluate:`` that judge the measurements rather than shape them: editing them reruns
# the report and acceptance jobs, not the evaluate job.
VERDICT_KEYS = ("gates", "strict")


def measurement_section(evaluate: Mapping[str, Any]) -> dict:
    """``evaluate:`` without `VERDICT_KEYS`: the part that `MeasurementSettings` is built from."""
    return {key: value for key, value in evaluate.items() if key not in VERDICT_KEYS}


SECTIONS: dict[str, type] = {
    "mlflow": MLflowSettings,
    "teacher": TeacherSettings,
    "target": TargetSettings,
    "on_policy": OnPolicySettings,
    "sample": SampleSettings,
    "label": LabelSettings,
    "student": StudentSettings,
    "train": TrainSettings,
    "tune": TuneSettings,
    "evaluate": EvaluateSettings,
}
