"""Does MD with a potential behave: NVE energy drift and blow-ups, NVT radial distributions.

`nve_run` integrates with velocity Verlet and reports total energies (eV) against time (ps);
`energy_drift_eV_per_atom_per_ps` fits their slope. `radial_distribution` turns frames (Langevin
NVT, from the sample stage's `langevin_frames`) into g(r) and `rdf_difference` compares two.
`md_validation` is the evaluate stage's step: all of the above for a teacher and a student.
`bussi_run` is a long NVT (Bussi thermostat) that tracks its conserved quantity and stops at a
blow-up; `target_nvt_rows` runs it with the student on each target and compares its g(r)
(`comparison_rdf`, between molecules) with the teacher's MD frames of that target.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from ase.md.bussi import Bussi
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list
from vesin import NeighborList

from mlff_distill.calculator_pool import map_with_calculator
from mlff_distill.contacts import closest_contacts_A
from mlff_distill.sampling.dynamics import (
    blow_up_reason,
    check_steps,
    langevin_frames,
    thermalized,
    too_close,
)
from mlff_distill.sampling.on_policy import ContactBounds
from mlff_distill.settings import MDValidationSettings
from mlff_distill.teachers import Teacher, TeacherCalculator

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 60.0  # how often a long `bussi_run` with a ``label`` logs its progress


def nve_run(
    calculator: Calculator, atoms: Atoms, timestep_fs: float, steps: int, temperature_K: float, seed: int
) -> dict:
    """Velocity-Verlet NVE from ``atoms`` with velocities drawn at ``temperature_K``.

    Returns ``times_ps`` and ``total_energies_eV`` (one per step done, the start included),
    ``blew_up`` and ``reason`` (None when it ran to the end). The run stops at the first step
    with a non-finite energy or force, a force above `MAX_FORCE_eV_PER_A`, an atom moving more
    than `MAX_STEP_DISPLACEMENT_A` in one step, or a total energy more than
    `MAX_ENERGY_CHANGE_eV_PER_ATOM` per atom away from the start.
    """
    check_steps(timestep_fs, steps)
    atoms = thermalized(atoms, calculator, temperature_K, seed)
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    energies = [atoms.get_total_energy()]
    reason = blow_up_reason(atoms, energies[0], energies[0], atoms.positions)
    while reason is None and len(energies) <= steps:
        previous = atoms.positions.copy()
        dynamics.run(1)
        energies.append(atoms.get_total_energy())
        reason = blow_up_reason(atoms, energies[-1], energies[0], previous)
    times_ps = np.arange(len(energies)) * timestep_fs * 1e-3
    return {
        "times_ps": times_ps,
        "total_energies_eV": np.array(energies),
        "blew_up": reason is not None,
        "reason": reason,
    }


def energy_drift_eV_per_atom_per_ps(times_ps: np.ndarray, energies_eV: np.ndarray, n_atoms: int) -> float:
    """Least-squares slope of total energy against time, per atom (eV/atom/ps)."""
    times_ps, energies_eV = np.asarray(times_ps, float), np.asarray(energies_eV, float)
    if times_ps.shape != energies_eV.shape or len(times_ps) < 2 or np.ptp(times_ps) == 0:
        raise ValueError(
            f"times_ps and energies_eV: need two or more points at different times "
            f"and equal lengths, got {len(times_ps)} and {len(energies_eV)}"
        )
    if n_atoms < 1:
        raise ValueError(f"n_atoms: must be >= 1, got {n_atoms}")
    slope_eV_per_ps = np.polyfit(times_ps, energies_eV, 1)[0]
    return float(slope_eV_per_ps / n_atoms)


MIN_DISTANCE_A = 0.6  # two atoms closer than this: the run has blown up (a collapse)
BUSSI_TAUT_FS = 100.0  # the Bussi thermostat's time constant


def bussi_run(
    calculator: Calculator,
    atoms: Atoms,
    temperature_K: float,
    timestep_fs: float,
    steps: int,
    sample_every: int,
    seed: int,
    min_distance_A: float = MIN_DISTANCE_A,
    taut_fs: float = BUSSI_TAUT_FS,
    contacts: Optional[ContactBounds] = None,
    label: Optional[str] = None,
) -> dict:
    """NVT with ASE's Bussi thermostat (stochastic velocity rescaling, time constant ``taut_fs``)
    from ``thermalized(atoms, ...)`` (velocities drawn with ``seed``, the thermostat's noise with
    ``seed + 1``).

    The thermostat aims at the degrees of freedom the run really has: 3N - 3 (no net momentum)
    in a periodic cell, 3N - 6 for a molecule (nor angular momentum; 1 for a diatomic), which
    Bussi's rescaling keeps. Its conserved quantity is the potential plus kinetic energy minus
    the energy the thermostat put in (``transferred_energy``): a good integrator keeps it flat.

    The run stops at the first step that `blow_up_reason` names (non-finite or huge forces, an
    atom jumping, the conserved quantity moving by more than its limit per atom), that brings
    two atoms closer than ``min_distance_A``, or (checked on the kept frames) that violates
    ``contacts`` (lowered to the start's own closest pairs, `ContactBounds.for_start`). Returns
    ``times_ps`` and ``conserved_eV`` (every step done, the start included), ``frames`` (a copy
    every ``sample_every`` steps, the start excluded, with its energy and forces as a single-point
    calculator), ``blew_up``, ``reason`` (None when it ran to the end), ``time_ps`` (reached) and
    ``mean_temperature_K`` (of the kinetic energy over the steps done, for those degrees of freedom).
    With a ``label``, the run logs its progress under it every `PROGRESS_EVERY_S` seconds.
    """
    check_steps(timestep_fs, steps)
    if sample_every < 1:
        raise ValueError(f"sample_every: must be >= 1, got {sample_every}")
    if temperature_K <= 0 or len(atoms) < 2:
        raise ValueError(f"bussi_run: needs temperature_K > 0 and two atoms or more, got {temperature_K}, {len(atoms)}")
    contacts = contacts.for_start(atoms) if contacts is not None else None
    atoms = thermalized(atoms, calculator, temperature_K, seed)
    dynamics = Bussi(
        atoms, timestep_fs * units.fs, temperature_K, taut_fs * units.fs, rng=np.random.default_rng(seed + 1)
    )
    n = len(atoms)
    dynamics.ndof = 3 * n - 3 if atoms.pbc.any() else (3 * n - 6 if n > 2 else 1)
    dynamics.target_kinetic_energy = 0.5 * temperature_K * units.kB * dynamics.ndof

    def conserved_eV() -> float:
        return atoms.get_potential_energy() + atoms.get_kinetic_energy() - dynamics.transferred_energy

    energies, kinetic = [conserved_eV()], [atoms.get_kinetic_energy()]
    frames: list[Atoms] = []
    reason = blow_up_reason(atoms, energies[0], energies[0], atoms.positions) or too_close(atoms, min_distance_A)
    started_s = last_log_s = time.perf_counter()
    while reason is None and len(energies) <= steps:
        previous = atoms.positions.copy()
        dynamics.run(1)
        energies.append(conserved_eV())
        kinetic.append(atoms.get_kinetic_energy())
        reason = blow_up_reason(atoms, energies[-1], energies[0], previous) or too_close(atoms, min_distance_A)
        kept = (len(energies) - 1) % sample_every == 0
        if reason is None and kept and contacts is not None:
            reason = contacts.violation(atoms)
        if reason is None and kept:
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
            frames.append(frame)
        if label is not None and time.perf_counter() - last_log_s > PROGRESS_EVERY_S:
            last_log_s = time.perf_counter()
            done = len(energies) - 1
            logger.info(
                "%s: step %d of %d (%.2f ps), %.1f steps/s, %.0f K now",
                label,
                done,
                steps,
                done * timestep_fs * 1e-3,
                done / (last_log_s - started_s),
                atoms.get_temperature(),
            )
    times_ps = np.arange(len(energies)) * timestep_fs * 1e-3
    return {
        "times_ps": times_ps,
        "conserved_eV": np.array(energies),
        "frames": frames,
        "blew_up": reason is not None,
        "reason": reason,
        "time_ps": float(times_ps[-1]),
        "mean_temperature_K": float(2 * np.mean(kinetic) / (dynamics.ndof * units.kB)),
    }


def radial_distribution(
    frames: Sequence[Atoms], r_max_A: float, n_bins: int, pairs: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres ``r`` (Angstrom) and g(r) averaged over ``frames``.

    Periodic frames (all three directions): the usual g(r), pair counts over shells with all
    images within ``r_max_A``, normalised by the ideal-gas count at the frame's number density,
    so g -> 1 at long range. Molecules (no periodic direction): the pair-distance histogram
    divided by the number of pairs and the bin width (a density per Angstrom that integrates to
    the fraction of pairs within ``r_max_A``). ``pairs=(Z1, Z2)`` keeps pairs of those atomic
    numbers only.
    """
    if not frames:
        raise ValueError("frames: empty")
    if r_max_A <= 0 or n_bins < 1:
        raise ValueError(f"r_max_A must be > 0 and n_bins >= 1, got {r_max_A} and {n_bins}")
    periodic = [bool(frame.pbc.all()) for frame in frames]
    if any(frame.pbc.any() and not p for frame, p in zip(frames, periodic)) or len(set(periodic)) > 1:
        raise ValueError("frames: all must be periodic in x, y and z, or all without periodicity")
    edges = np.linspace(0.0, r_max_A, n_bins + 1)
    g = np.zeros(n_bins)
    for frame in frames:
        g += _periodic_g(frame, edges, pairs) if periodic[0] else _molecular_g(frame, edges, pairs)
    return 0.5 * (edges[1:] + edges[:-1]), g / len(frames)


def _pair_selection(numbers: np.ndarray, pairs: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Masks of centre and neighbour atoms for ``pairs`` (all atoms when None)."""
    if pairs is None:
        everything = np.ones(len(numbers), bool)
        return everything, everything
    first, second = (numbers == pairs[0]), (numbers == pairs[1])
    if not first.any() or not second.any():
        raise ValueError(f"pairs: {pairs} not present in a frame with atomic numbers {sorted(set(numbers))}")
    return first, second


def _periodic_g(frame: Atoms, edges: np.ndarray, pairs: tuple[int, int] | None) -> np.ndarray:
    centres, neighbours = _pair_selection(frame.numbers, pairs)
    i, j, d = neighbor_list("ijd", frame, float(edges[-1]))
    keep = centres[i] & neighbours[j]
    counts = np.histogram(d[keep], bins=edges)[0]
    shells_A3 = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    density_per_A3 = neighbours.sum() / frame.get_volume()
    return counts / (centres.sum() * density_per_A3 * shells_A3)


def _molecular_g(frame: Atoms, edges: np.ndarray, pairs: tuple[int, int] | None) -> np.ndarray:
    centres, neighbours = _pair_selection(frame.numbers, pairs)
    distances = np.linalg.norm(frame.positions[:, None] - frame.positions[None], axis=-1)
    keep = centres[:, None] & neighbours[None, :] & ~np.eye(len(frame), dtype=bool)
    counts = np.histogram(distances[keep], bins=edges)[0]
    return counts / (keep.sum() * np.diff(edges))


def rdf_difference(r: np.ndarray, g_a: np.ndarray, g_b: np.ndarray) -> float:
    """Integral of |g_a - g_b| dr over ``r`` (trapezoid rule; Angstrom for g(r))."""
    r, g_a, g_b = (np.asarray(x, float) for x in (r, g_a, g_b))
    if not r.shape == g_a.shape == g_b.shape or r.ndim != 1:
        raise ValueError(f"r, g_a and g_b: need equal 1-D shapes, got {r.shape}, {g_a.shape}, {g_b.shape}")
    return float(np.trapezoid(np.abs(g_a - g_b), r))


RDF_SPACING_A = 0.02  # grid of the comparison's g(r)
RDF_SMOOTHING_A = 0.1  # its Gaussian smoothing (standard deviation)
RDF_KERNEL_REACH = 4.0  # the smoothing kernel's half width, in standard deviations
CONTACT_CUTOFF_A = 3.0  # closest contacts reported per pair of elements: those within this distance
EQUILIBRATION_FRACTION = 0.2  # the first part of an NVT run (student or teacher), left out of its g(r)


def comparison_rdf(
    frames: Sequence[Atoms], r_max_A: float, smoothing_A: float = RDF_SMOOTHING_A
) -> tuple[np.ndarray, np.ndarray, str]:
    """The g(r) by which the student's MD of a target is compared with the teacher's: grid ``r``
    (Angstrom, every `RDF_SPACING_A` up to ``r_max_A``), ``g`` averaged over ``frames``, and what
    it is (``kind``).

    Chosen to measure the structure of the liquid rather than noise:

    - Between molecules: where the frames carry ``arrays["molecule_index"]`` with two molecules or
      more, only pairs of atoms in different molecules count. The bonds inside a molecule make
      peaks tens of times higher than the liquid's (O-H at 0.96 A in water), whose jitter would
      dominate an integrated difference and says nothing about the liquid.
    - All species together, normalised per pair: the counts over the ideal-gas count of the
      pairs counted (``n_pairs * shell volume / cell volume``), so g -> 1 at long range whatever
      the molecules' size; per-species g(r) would split the few pairs of a ~100-atom box further.
    - Smoothed: pair distances histogrammed every `RDF_SPACING_A` (0.02 A) then convolved with a
      Gaussian of ``smoothing_A`` (0.1 A by default: narrower than the intermolecular peaks of a
      liquid). Both models get the same smoothing, so a peak that moves or changes still shows,
      while the noise of the integrated absolute difference falls as 1/sqrt(width).

    What remains is sampling: the g(r) of a ~100-atom box fluctuates over picoseconds, so the
    difference between two samples of one liquid depends on how long and how equilibrated they
    are more than on these choices (README, "Measured"); `target_nvt_rows` reports the teacher's
    own split-half difference beside each comparison for that reason.

    Without ``molecule_index`` (a crystal, an interface read from a file) all pairs count. A
    non-periodic frame gives the pair-distance density per pair (1/Angstrom), as
    `radial_distribution` does for molecules.
    """
    per_frame = FrameRDFs.of(frames, r_max_A, smoothing_A)
    return (*per_frame.mean(), per_frame.kind)


@dataclass(frozen=True)
class FrameRDFs:
    """The unsmoothed g of each frame on `comparison_rdf`'s grid, so that its average over any
    subset of the frames (two halves, the whole) needs no second count of their pairs."""

    r_A: np.ndarray  # bin centres, up to r_max_A plus the smoothing kernel's reach
    g: np.ndarray  # (frames, bins)
    r_max_A: float
    smoothing_A: float
    kind: str

    @classmethod
    def of(cls, frames: Sequence[Atoms], r_max_A: float, smoothing_A: float = RDF_SMOOTHING_A) -> "FrameRDFs":
        """Count ``frames``' pairs as `comparison_rdf` does."""
        if not frames:
            raise ValueError("frames: empty")
        if r_max_A <= 0 or smoothing_A < 0:
            raise ValueError(f"r_max_A must be > 0 and smoothing_A >= 0, got {r_max_A} and {smoothing_A}")
        periodic = {bool(frame.pbc.all()) for frame in frames}
        if len(periodic) > 1 or any(frame.pbc.any() and not frame.pbc.all() for frame in frames):
            raise ValueError("frames: all must be periodic in x, y and z, or all without periodicity")
        periodic_frames = periodic.pop()
        reach_A = RDF_KERNEL_REACH * smoothing_A  # histogram beyond r_max_A so the edge is not cut
        edges = np.arange(0.0, r_max_A + reach_A + RDF_SPACING_A, RDF_SPACING_A)
        shells_A3 = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
        g = np.zeros((len(frames), len(edges) - 1))
        between_molecules = False
        for index, frame in enumerate(frames):
            distances, n_pairs, between = _pair_distances(frame, float(edges[-1]))
            between_molecules |= between
            counts = np.histogram(distances, bins=edges)[0]
            if periodic_frames:
                g[index] = counts / (n_pairs * shells_A3 / frame.get_volume())
            else:
                g[index] = counts / (n_pairs * RDF_SPACING_A)
        kind = "g(r)" if periodic_frames else "pair-distance density per pair (1/A)"
        pairs = "between molecules" if between_molecules else "all pairs"
        return cls(0.5 * (edges[1:] + edges[:-1]), g, r_max_A, smoothing_A, f"{kind}, {pairs}")

    def mean(self, indices: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Grid ``r`` (up to ``r_max_A``) and the smoothed g averaged over the frames at ``indices``
        (all of them when None)."""
        g = (self.g if indices is None else self.g[list(indices)]).mean(axis=0)
        if self.smoothing_A > 0:
            half_width = round(RDF_KERNEL_REACH * self.smoothing_A / RDF_SPACING_A)
            offsets = np.arange(-half_width, half_width + 1) * RDF_SPACING_A
            kernel = np.exp(-0.5 * (offsets / self.smoothing_A) ** 2)
            g = np.convolve(g, kernel / kernel.sum(), mode="same")
        keep = self.r_A <= self.r_max_A
        return self.r_A[keep], g[keep]


def _pair_distances(frame: Atoms, r_max_A: float) -> tuple[np.ndarray, int, bool]:
    """Distances (all images within ``r_max_A``, each ordered pair) of the pairs `comparison_rdf`
    counts, the number of such pairs in the frame, and whether they are between molecules only."""
    first, second, distances = NeighborList(cutoff=r_max_A, full_list=True).compute(
        frame.positions, frame.cell.array, frame.pbc, "ijd"
    )
    n = len(frame)
    molecules = frame.arrays.get("molecule_index")
    if molecules is None or len(np.unique(molecules)) < 2:
        return distances, n * (n - 1), False
    molecules = np.asarray(molecules)
    _, sizes = np.unique(molecules, return_counts=True)
    return distances[molecules[first] != molecules[second]], n * n - int(np.sum(sizes**2)), True


def target_nvt_rows(
    calculator: Union[Calculator, Callable[[], Calculator]],
    starts: Sequence[tuple[str, float, Atoms]],
    teacher_frames: Mapping[tuple[str, float], Sequence[Atoms]],
    settings: MDValidationSettings,
    seed: int,
    contacts: Optional[ContactBounds] = None,
    teacher_calculator: Optional[Calculator] = None,
    processes: int = 1,
) -> list[dict]:
    """The student's long NVT on each target: one `bussi_run` of ``settings.nvt_ps`` per
    ``(target, temperature_K, start)`` of ``starts`` (``settings.timestep_fs``, a frame every
    ``settings.sample_every`` steps, seeds ``seed``, ``seed + 1``, ... in the order of
    ``starts``; a blow-up includes a violation of ``contacts``), its g(r) compared with the
    teacher's MD frames of that target and temperature
    (``teacher_frames[(target, temperature_K)]``) by `comparison_rdf` up to
    ``settings.rdf_r_max_A``. With ``processes`` > 1 the student's runs are shared among that
    many spawned processes (`map_with_calculator`; ``calculator`` is then a picklable function
    that makes the student's calculator), with the same results as in one.

    A row per start: ``target``, ``temperature_K``, ``n_atoms``, ``time_ps`` (reached),
    ``blew_up``, ``reason``, ``conserved_drift_eV_per_atom_per_ps`` (`energy_drift_eV_per_atom_per_ps`
    of the thermostat's conserved quantity; None before a second step), ``mean_temperature_K``,
    ``md_steps_per_s`` (steps reached over the run's wall-clock seconds: ASE's Bussi loop with the
    student, frames and checks included; the speed a user of the student sees in MD),
    ``n_student_frames`` and ``n_teacher_frames`` (those in the g(r)), ``rdf_kind``,
    ``rdf_integrated_abs_difference`` (`rdf_difference` of student and teacher),
    ``rdf_teacher_halves_difference`` (the same between two halves of the teacher's frames, split
    by their ``info["group"]`` (trajectory) where there are two or more, else first half against
    second: a noise floor, and a lower bound of it: two halves of frames that are not yet
    equilibrated agree with each other better than with an equilibrated run) and the curves ``r_A``,
    ``g_teacher``, ``g_student`` (lists) for a figure. The student's g(r) leaves out the first
    `EQUILIBRATION_FRACTION` of its frames (equilibration), and uses all of them when that
    would leave none. The g(r) values are None where there are no teacher frames or no student
    frame (a blow-up before the first); ``rdf_not_run`` says why (else None).
    ``rdf_student_halves_difference``: the same between the first and second half of the
    student's g(r) frames, the noise floor of its side.
    ``closest_contacts_A`` and ``closest_contacts``: `closest_contacts` of all the student's
    frames against the teacher's reference frames.

    With ``settings.teacher_nvt_ps`` > 0 and a ``teacher_calculator``, the teacher runs its own
    `bussi_run` of that length from the same start (seed ``seed + offset + len(starts)``), and its
    frames, the first `EQUILIBRATION_FRACTION` left out, replace ``teacher_frames`` as the g(r)
    reference; the row adds ``teacher_nvt_time_ps`` (reached), ``teacher_nvt_blew_up`` and
    ``teacher_md_steps_per_s``, and ``rdf_reference`` says which reference was used.
    """
    rows = []
    steps = max(round(settings.nvt_ps * 1000.0 / settings.timestep_fs), 1)
    teacher_steps = round(settings.teacher_nvt_ps * 1000.0 / settings.timestep_fs) if teacher_calculator else 0
    names = [
        f"NVT {offset + 1} of {len(starts)}, {target} at {temperature_K:g} K ({len(atoms)} atoms)"
        for offset, (target, temperature_K, atoms) in enumerate(starts)
    ]
    every, dt = settings.sample_every, settings.timestep_fs
    tasks = [  # `bussi_run`'s arguments after the calculator
        (
            atoms,
            temperature_K,
            dt,
            steps,
            every,
            seed + offset,
            MIN_DISTANCE_A,
            BUSSI_TAUT_FS,
            contacts,
            name + ", the student",
        )
        for offset, ((_, temperature_K, atoms), name) in enumerate(zip(starts, names))
    ]
    for name in names:
        logger.info("%s: the student, %d steps of %g fs", name, steps, settings.timestep_fs)

    def reached(index: int, result: tuple[dict, float]) -> None:
        run, elapsed_s = result
        logger.info(
            "%s: the student reached %g ps in %.0f s; %s",
            names[index],
            run["time_ps"],
            elapsed_s,
            run["reason"] or "no blow-up",
        )

    student_runs = map_with_calculator(_timed_bussi_run, calculator, tasks, processes, on_result=reached)
    for offset, ((target, temperature_K, atoms), name, (run, elapsed_s)) in enumerate(zip(starts, names, student_runs)):
        times_ps, conserved = run["times_ps"], run["conserved_eV"]
        student = _equilibrated(run["frames"])
        teacher = list(teacher_frames.get((target, float(temperature_K)), []))
        reference: dict = {"rdf_reference": "the sample stage's teacher MD"}
        if teacher_steps > 0:
            logger.info("%s: the teacher, %d steps (the g(r) reference)", name, teacher_steps)
            teacher_run, teacher_s = _timed_bussi_run(
                teacher_calculator,
                atoms,
                temperature_K,
                dt,
                teacher_steps,
                every,
                seed + offset + len(starts),
                label=f"{name}, the teacher",
            )
            logger.info("%s: the teacher reached %g ps in %.0f s", name, teacher_run["time_ps"], teacher_s)
            teacher = _equilibrated(teacher_run["frames"])
            reference = {
                "rdf_reference": f"the teacher's own NVT, {teacher_run['time_ps']:g} ps",
                "teacher_nvt_time_ps": teacher_run["time_ps"],
                "teacher_nvt_blew_up": teacher_run["blew_up"],
                "teacher_md_steps_per_s": teacher_run["time_ps"] * 1000.0 / settings.timestep_fs / teacher_s,
            }
        row = {
            "target": target,
            "temperature_K": float(temperature_K),
            "n_atoms": len(atoms),
            "time_ps": run["time_ps"],
            "blew_up": run["blew_up"],
            "reason": run["reason"],
            "conserved_drift_eV_per_atom_per_ps": (
                energy_drift_eV_per_atom_per_ps(times_ps, conserved, len(atoms)) if len(conserved) > 1 else None
            ),
            "mean_temperature_K": run["mean_temperature_K"],
            "md_steps_per_s": run["time_ps"] * 1000.0 / settings.timestep_fs / elapsed_s,
            "n_student_frames": len(student),
            "n_teacher_frames": len(teacher),
            **reference,
            **_rdf_comparison(student, teacher, settings.rdf_r_max_A),
            **closest_contacts(run["frames"], teacher),
        }
        rows.append(row)
    return rows


def _timed_bussi_run(calculator: Calculator, *args, **kwargs) -> tuple[dict, float]:
    """`bussi_run` (the same arguments) and its wall-clock seconds."""
    start_s = time.perf_counter()
    run = bussi_run(calculator, *args, **kwargs)
    return run, time.perf_counter() - start_s


def closest_contacts(student: Sequence[Atoms], teacher: Sequence[Atoms]) -> dict:
    """The closest contact of each pair of elements (Angstrom, within `CONTACT_CUTOFF_A`) in the
    student's NVT frames and in the teacher's reference frames: ``closest_contacts_A`` (``{"H-H":
    {"student": 1.14, "teacher": 1.35}, ...}``, None where one side has no such pair) and
    ``closest_contacts`` ("H-H 1.14 / 1.35, ...", student / teacher) for the report. A student
    that comes much closer than the teacher is somewhere the teacher does not go."""
    ours, theirs = closest_contacts_A(student, CONTACT_CUTOFF_A), closest_contacts_A(teacher, CONTACT_CUTOFF_A)
    pairs = sorted(set(ours) | set(theirs))
    names = [f"{chemical_symbols[a]}-{chemical_symbols[b]}" for a, b in pairs]

    def shown(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.2f}"

    return {
        "closest_contacts_A": {
            name: {"student": ours.get(pair), "teacher": theirs.get(pair)} for name, pair in zip(names, pairs)
        },
        "closest_contacts": ", ".join(
            f"{name} {shown(ours.get(pair))} / {shown(theirs.get(pair))}" for name, pair in zip(names, pairs)
        ),
    }


def _equilibrated(frames: list[Atoms]) -> list[Atoms]:
    """``frames`` without the first `EQUILIBRATION_FRACTION` of them (all of them when that leaves none)."""
    return frames[int(EQUILIBRATION_FRACTION * len(frames)) :] or frames


def _rdf_comparison(student: Sequence[Atoms], teacher: Sequence[Atoms], r_max_A: float) -> dict:
    """The g(r) columns of a `target_nvt_rows` row."""
    missing = "no teacher MD frames" if not teacher else "no student frames" if not student else None
    if missing:
        return {
            "rdf_kind": None,
            "rdf_integrated_abs_difference": None,
            "rdf_teacher_halves_difference": None,
            "rdf_student_halves_difference": None,
            "rdf_not_run": missing,
            "r_A": None,
            "g_teacher": None,
            "g_student": None,
        }
    teacher_g, student_g = FrameRDFs.of(teacher, r_max_A), FrameRDFs.of(student, r_max_A)
    r, g_teacher = teacher_g.mean()
    _, g_student = student_g.mean()
    return {
        "rdf_kind": teacher_g.kind,
        "rdf_integrated_abs_difference": rdf_difference(r, g_teacher, g_student),
        "rdf_teacher_halves_difference": _halves_difference(teacher_g, _halves(teacher)),
        "rdf_student_halves_difference": _halves_difference(student_g, _halves(student)),
        "rdf_not_run": None,
        "r_A": r.tolist(),
        "g_teacher": g_teacher.tolist(),
        "g_student": g_student.tolist(),
    }


def _halves_difference(per_frame: FrameRDFs, halves: tuple[list[int], list[int]]) -> Optional[float]:
    """`rdf_difference` of the g(r) of two halves (frame indices) of some frames; None when one is empty."""
    first, second = halves
    if not first or not second:
        return None
    r, g_first = per_frame.mean(first)
    return rdf_difference(r, g_first, per_frame.mean(second)[1])


def _halves(frames: Sequence[Atoms]) -> tuple[list[int], list[int]]:
    """Two halves of ``frames``, as indices: alternate trajectories (``info["group"]``) where there
    are two or more, else the first half of the frames and the second."""
    groups = list(dict.fromkeys(frame.info.get("group") for frame in frames))
    if len(groups) >= 2:
        first = set(groups[0::2])
        chosen = [frame.info.get("group") in first for frame in frames]
        return [i for i, c in enumerate(chosen) if c], [i for i, c in enumerate(chosen) if not c]
    middle = len(frames) // 2
    return list(range(middle)), list(range(middle, len(frames)))


def md_validation(
    settings: MDValidationSettings,
    seeds: Sequence[Atoms],
    random_seed: int,
    teacher: Teacher,
    student_calculator: Calculator,
    structures: Sequence[Atoms],
) -> dict:
    """The evaluate stage's MD step, with the ``evaluate.md`` settings.

    Starts: one teacher-MD frame per seed from the sampled ``structures`` (teacher-equilibrated,
    at the frame's temperature), else the run's ``seeds`` at ``temperature_K``; ``random_seed``
    seeds the velocities and thermostats. NVE from the first ``nve_starts`` starts with the
    student and the first ``teacher_nve_starts`` with the teacher (``student_calculator`` a
    `StudentCalculator`); NVT of both from the largest start, compared by `radial_distribution`.
    A teacher run is skipped when one call times the number of steps exceeds
    ``teacher_budget_s`` (seconds); without the teacher's NVT there is no RDF comparison.

    Returns ``{"drift": [rows], "rdf": {...} or None, "rdf_not_run": reason or None}``: a row
    per NVE run (``model``, ``start``, ``n_atoms``, ``temperature_K``, ``time_ps``,
    ``drift_eV_per_atom_per_ps`` (None if not run or stopped before a second step),
    ``max_energy_change_eV_per_atom``, ``blew_up``, ``reason``); ``rdf`` holds ``r_A``,
    ``g_teacher``, ``g_student`` (lists), ``integrated_abs_difference``, ``kind`` (g(r), or for a
    molecule the pair-distance density per pair, 1/Angstrom), ``start``, ``temperature_K`` and
    ``n_frames``.
    """
    starts = _starts(structures, seeds, settings.temperature_K)
    if not starts:
        raise ValueError("md_validation: no structures to start from (no MD frames, no seeds)")
    calculators = {"student": student_calculator, "teacher": TeacherCalculator(teacher)}
    drift = []
    for model, count in (("student", settings.nve_starts), ("teacher", settings.teacher_nve_starts)):
        for name, atoms, temperature_K in starts[:count]:
            row = {"model": model, "start": name, "n_atoms": len(atoms), "temperature_K": temperature_K}
            too_slow = model == "teacher" and _over_budget(
                calculators[model], atoms, settings.nve_steps, settings.teacher_budget_s
            )
            drift.append(
                {
                    **row,
                    **(
                        _nve_row(calculators[model], atoms, temperature_K, settings, random_seed)
                        if not too_slow
                        else {
                            "time_ps": 0.0,
                            "drift_eV_per_atom_per_ps": None,
                            "max_energy_change_eV_per_atom": None,
                            "blew_up": None,
                            "reason": f"not run: {too_slow}",
                        }
                    ),
                }
            )
    name, atoms, temperature_K = max(starts, key=lambda start: len(start[1]))
    too_slow = _over_budget(calculators["teacher"], atoms, settings.nvt_steps, settings.teacher_budget_s)
    if too_slow:
        return {"drift": drift, "rdf": None, "rdf_not_run": f"teacher NVT: {too_slow}"}
    g = {}
    for model, calculator in calculators.items():
        frames = list(
            langevin_frames(
                calculator,
                atoms,
                temperature_K,
                settings.timestep_fs,
                settings.nvt_steps,
                settings.sample_every,
                random_seed,
            )
        )
        r, g[model] = radial_distribution(frames, settings.rdf_r_max_A, settings.rdf_bins)
    return {
        "drift": drift,
        "rdf_not_run": None,
        "rdf": {
            "r_A": r.tolist(),
            "g_teacher": g["teacher"].tolist(),
            "g_student": g["student"].tolist(),
            "integrated_abs_difference": rdf_difference(r, g["teacher"], g["student"]),
            "kind": "g(r)" if atoms.pbc.all() else "pair-distance density per pair (1/A)",
            "start": name,
            "temperature_K": temperature_K,
            "n_frames": len(frames),
        },
    }


def _nve_row(
    calculator: Calculator, atoms: Atoms, temperature_K: float, settings: MDValidationSettings, seed: int
) -> dict:
    """`nve_run` of ``calculator`` from ``atoms``, summarised for the drift table."""
    run = nve_run(calculator, atoms, settings.timestep_fs, settings.nve_steps, temperature_K, seed)
    energies = run["total_energies_eV"]
    return {
        "time_ps": float(run["times_ps"][-1]),
        "drift_eV_per_atom_per_ps": (
            energy_drift_eV_per_atom_per_ps(run["times_ps"], energies, len(atoms)) if len(energies) > 1 else None
        ),
        "max_energy_change_eV_per_atom": float(np.abs(energies - energies[0]).max() / len(atoms)),
        "blew_up": run["blew_up"],
        "reason": run["reason"],
    }


def _over_budget(calculator: Calculator, atoms: Atoms, steps: int, budget_s: float) -> str | None:
    """Why ``steps`` calls of ``calculator`` on ``atoms`` would exceed ``budget_s`` seconds (the
    second of two calls timed: the first may compile), or None when they would not."""
    atoms = atoms.copy()
    calculator.calculate(atoms, ["energy", "forces"])
    start = time.perf_counter()
    calculator.calculate(atoms, ["energy", "forces"])
    estimate_s = steps * (time.perf_counter() - start)
    return (
        f"{steps} steps would take about {estimate_s:.0f} s, over the {budget_s:g} s budget"
        if estimate_s > budget_s
        else None
    )


def _starts(
    structures: Sequence[Atoms], seeds: Sequence[Atoms], temperature_K: float
) -> list[tuple[str, Atoms, float]]:
    """(name, structure, temperature in K): the first teacher-MD frame of each seed, else the seeds."""
    starts: dict[str, tuple[str, Atoms, float]] = {}
    for atoms in structures:
        seed = atoms.info.get("seed", atoms.get_chemical_formula())
        if atoms.info.get("strategy") == "md" and seed not in starts:
            starts[seed] = (seed, atoms, float(atoms.info.get("temperature_K", temperature_K)))
    return list(starts.values()) or [
        (atoms.info.get("seed", atoms.get_chemical_formula()), atoms, temperature_K) for atoms in seeds
    ]
