"""The student's own MD in an on-policy round: where it goes is where the teacher labels next.

`explore` runs Langevin NVT with the student (any ASE calculator) from each target's start at each
of its temperatures and keeps a frame every ``frame_every`` steps. A run that blows up (non-finite
values, a force above ``max_force_eV_per_A``, two atoms closer than ``min_distance_A``, or a check
of `mlff_distill.sampling.dynamics.blow_up_reason`) is stopped, and a few frames from just before
the blow-up are kept: there the student went wrong, so there the teacher's labels help most.
`ContactBounds` adds a check relative to the data: two atoms much closer than any pair of their
elements in the teacher's labels (a student that lacks repulsion there can pull molecules into each
other without a large force or a non-finite value). The runs can be shared among processes, with the
same results as in one. Units: Angstrom, eV, eV/Angstrom, fs, ps, K.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.data import chemical_symbols
from tqdm import tqdm

from mlff_distill.calculator_pool import map_with_calculator
from mlff_distill.contacts import closest_contacts_A, closest_labeled_contacts_A, describe_contacts
from mlff_distill.sampling.dynamics import blow_up_reason, langevin_frames, too_close
from mlff_distill.settings import ExploreSettings

STRATEGY = "on-policy"
LABEL_CONTACT_CUTOFF_A = 4.0  # pairs of elements never this close in the labels are not checked


def replicated(atoms: Atoms, times: int) -> Atoms:
    """A periodic structure repeated ``times`` times along each cell vector (a molecule as it is);
    ``arrays["molecule_index"]``, where present, stays unique per molecule."""
    if times < 1:
        raise ValueError(f"replicate: must be >= 1, got {times}")
    if times == 1 or not atoms.pbc.any():
        return atoms.copy()
    repeated = atoms.repeat(times)
    if "molecule_index" in atoms.arrays:
        per_copy = int(atoms.arrays["molecule_index"].max()) + 1 if len(atoms) else 0
        copy_of_atom = np.repeat(np.arange(times**3), len(atoms))
        repeated.arrays["molecule_index"] = repeated.arrays["molecule_index"] + copy_of_atom * per_copy
    return repeated


@dataclass(frozen=True)
class ContactBounds:
    """Two atoms closer than ``fraction`` x the closest pair of their elements in the teacher's
    labels (``closest_A``, from `closest_contacts_A`) count as a blow-up: the student is far outside
    the data there. Pairs the labels never bring within their cutoff are not checked."""

    closest_A: dict[tuple[int, int], float]
    fraction: float

    def describe(self) -> str:
        """The closest pairs, e.g. "H-H 1.29, O-O 2.39" (Angstrom)."""
        return describe_contacts(self.closest_A)

    def for_start(self, start: Atoms) -> "ContactBounds":
        """These bounds, lowered for each pair to the start's own closest distance where that is
        closer (a packed box may start closer than any labeled frame)."""
        own = closest_contacts_A([start], max(self.closest_A.values(), default=0.0))
        return ContactBounds({pair: min(d, own.get(pair, d)) for pair, d in self.closest_A.items()}, self.fraction)

    def violation(self, frame: Atoms) -> str | None:
        """What is too close in ``frame``, or None."""
        if not self.closest_A or len(frame) < 2:
            return None
        for (z1, z2), distance in closest_contacts_A([frame], self.fraction * max(self.closest_A.values())).items():
            labeled = self.closest_A.get((z1, z2))
            if labeled is not None and distance < self.fraction * labeled:
                return (
                    f"{chemical_symbols[z1]}-{chemical_symbols[z2]} {distance:.2f} A apart, closer than "
                    f"{self.fraction:g} x the closest such pair in the teacher's labels ({labeled:.2f} A)"
                )
        return None


def label_contact_bounds(store: Path, fraction: Optional[float]) -> Optional[ContactBounds]:
    """The `ContactBounds` of the training split of the label store ``store`` (pairs within
    `LABEL_CONTACT_CUTOFF_A`) at ``fraction``; None when ``fraction`` is None (the check is off)."""
    if fraction is None:
        return None
    return ContactBounds(closest_labeled_contacts_A(store, LABEL_CONTACT_CUTOFF_A), fraction)


def blow_up(
    frame: Atoms,
    energy_eV: float,
    start_energy_eV: float,
    previous_positions_A: np.ndarray,
    max_force_eV_per_A: float,
    min_distance_A: float,
) -> str | None:
    """Why this step of the student's MD counts as a blow-up, or None: `blow_up_reason`'s checks,
    then a force above ``max_force_eV_per_A`` or two atoms closer than ``min_distance_A``
    (minimum image)."""
    reason = blow_up_reason(frame, energy_eV, start_energy_eV, previous_positions_A)
    if reason is not None:
        return reason
    largest_force = float(np.linalg.norm(frame.get_forces(), axis=1).max()) if len(frame) else 0.0
    if largest_force > max_force_eV_per_A:
        return f"force of {largest_force:.1f} eV/A"
    return too_close(frame, min_distance_A)


def blowup_spacing(settings: ExploreSettings) -> int:
    """Steps between the frames kept before a blow-up: ``frames_before_blowup`` of them within
    one ``frame_every`` interval (at least 1)."""
    return max(1, settings.frame_every // max(1, settings.frames_before_blowup))


def explore(
    calculator: Union[Calculator, Callable[[], Calculator]],
    starts: Sequence[tuple[str, float, Atoms]],
    settings: ExploreSettings,
    random_seed: int,
    round_index: int,
    first_sample_index: int,
    first_group: int,
    val_fraction: float,
    contacts: Optional[ContactBounds] = None,
    processes: int = 1,
) -> tuple[list[Atoms], dict]:
    """The student's MD from each start, ``settings.starts`` runs each; the structures to label.

    ``calculator``: the student as an ASE calculator; with ``processes`` > 1, a picklable function
    that makes one instead: the runs are then shared among that many worker processes (each makes
    its calculator once), with the same results as in one process, since every run has its own seeds.
    The workers are spawned, so they import the caller's ``__main__`` again: a script calling this
    keeps its own work under ``if __name__ == "__main__"`` (as `workflow/scripts/explore.py` does).

    ``starts``: (target name, temperature in K, structure) each; a periodic structure is repeated
    ``settings.replicate`` times along each cell vector. Each run is Langevin NVT at that
    temperature (`sampling.dynamics.langevin_frames`; ``timestep_fs``, ``friction_per_fs``) for
    ``settings.steps`` steps, with velocities and noise seeded from ``random_seed``,
    ``round_index`` and the run's number; a frame is kept every ``frame_every`` steps. After
    every step the run is checked for a blow-up (`blow_up`, and ``contacts`` lowered to the
    start's own closest pairs, `ContactBounds.for_start`); on one it stops, and up to
    ``frames_before_blowup`` frames from the steps just before it (the last good step, then every
    `blowup_spacing` steps back, leaving out steps kept anyway) are kept too, marked
    ``info["before_blowup"] = True``.

    Each run is one group (``first_group`` + its number); ``round(val_fraction * runs)`` groups,
    drawn at random, are validation data, the rest training data (never test). Structures come run
    by run, in time order, numbered by ``info["sample_index"]`` from ``first_sample_index``; they
    carry no calculator, and ``info`` holds ``seed`` and ``target`` (the target's name),
    ``temperature_K``, ``strategy`` ("on-policy"), ``round``, ``group``, ``split``,
    ``sample_index``, ``before_blowup`` and ``md_step``; ``arrays["molecule_index"]`` is kept.

    Returns the structures and stats: ``n_runs``, ``n_steps`` (steps run), ``n_frames`` (kept, all),
    ``n_frames_before_blowup``, ``n_blowups`` and ``blowups`` (one dict per blow-up: ``target``,
    ``temperature_K``, ``run``, ``step``, ``time_ps``, ``reason``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be within [0, 1), got {val_fraction}")
    if processes < 1:
        raise ValueError(f"processes: must be >= 1, got {processes}")
    runs = [(name, float(temperature), atoms) for name, temperature, atoms in starts for _ in range(settings.starts)]
    rng = np.random.default_rng([random_seed, round_index])
    val_runs = set(rng.choice(len(runs), size=round(val_fraction * len(runs)), replace=False).tolist())
    tasks = []
    for run, (_, temperature_K, start) in enumerate(runs):
        atoms = replicated(start, settings.replicate)
        seed = int(np.random.SeedSequence([random_seed, round_index, run]).generate_state(1)[0])
        bounds = contacts.for_start(atoms) if contacts is not None else None
        tasks.append((atoms, temperature_K, settings, seed, bounds))
    structures: list[Atoms] = []
    blowups: list[dict] = []
    n_steps = n_before = 0
    description = f"round {round_index} student MD"
    with tqdm(total=len(runs) * settings.steps, unit="step", desc=description, mininterval=2.0) as progress:
        outcomes = _run_all(calculator, tasks, min(processes, len(tasks)), progress)
        for run, ((name, temperature_K, _), (frames, stop)) in enumerate(zip(runs, outcomes)):
            n_steps += settings.steps if stop is None else stop["step"]
            if stop is not None:
                blowups.append(
                    {
                        "target": name,
                        "temperature_K": temperature_K,
                        "run": run,
                        "step": stop["step"],
                        "time_ps": stop["step"] * settings.timestep_fs * 1e-3,
                        "reason": stop["reason"],
                    }
                )
                progress.set_postfix(blowups=len(blowups))
            for step, atoms, before_blowup in frames:
                atoms.info = {
                    "seed": name,
                    "target": name,
                    "temperature_K": temperature_K,
                    "strategy": STRATEGY,
                    "round": round_index,
                    "group": first_group + run,
                    "split": "val" if run in val_runs else "train",
                    "sample_index": first_sample_index + len(structures),
                    "before_blowup": before_blowup,
                    "md_step": step,
                }
                n_before += before_blowup
                structures.append(atoms)
    stats = {
        "n_runs": len(runs),
        "n_steps": n_steps,
        "n_frames": len(structures),
        "n_frames_before_blowup": n_before,
        "n_blowups": len(blowups),
        "blowups": blowups,
    }
    return structures, stats


RunOutcome = tuple[list[tuple[int, Atoms, bool]], Optional[dict]]


def _run_all(
    calculator: Union[Calculator, Callable[[], Calculator]], tasks: list[tuple], processes: int, progress: tqdm
) -> list[RunOutcome]:
    """`_one_run` of every task ``(start, temperature_K, settings, seed, contacts)``, in order, by
    `map_with_calculator` (in one process the progress bar moves a step at a time, in several a
    run at a time)."""
    if processes == 1:
        return map_with_calculator(functools.partial(_one_run, progress=progress), calculator, tasks)
    return map_with_calculator(
        _one_run, calculator, tasks, processes, on_result=lambda index, _: progress.update(tasks[index][2].steps)
    )


def _one_run(
    calculator: Calculator,
    start: Atoms,
    temperature_K: float,
    settings: ExploreSettings,
    seed: int,
    contacts: Optional[ContactBounds],
    progress: Optional[tqdm] = None,
) -> RunOutcome:
    """One run of `explore`: its kept frames as (step, bare structure, before blow-up), in time
    order, and ``{"step", "reason"}`` of its blow-up (None if it ran to the end). Each step
    advances ``progress`` (if given); a blow-up, by the steps left."""
    spacing = blowup_spacing(settings)
    # The recent steps, enough for frames_before_blowup picks every `spacing` steps back with the
    # regularly kept steps among them skipped.
    recent: deque[tuple[int, Atoms]] = deque(maxlen=(settings.frames_before_blowup + 2) * spacing + 1)
    kept: list[tuple[int, Atoms, bool]] = []
    previous_positions, start_energy = start.positions.copy(), None
    steps = langevin_frames(
        calculator, start, temperature_K, settings.timestep_fs, settings.steps, 1, seed, settings.friction_per_fs
    )
    try:
        for step, frame in enumerate(steps, start=1):
            energy = frame.get_potential_energy()
            start_energy = energy if start_energy is None else start_energy
            reason = blow_up(
                frame,
                energy,
                start_energy,
                previous_positions,
                settings.max_force_eV_per_A,
                settings.min_distance_A,
            )
            if reason is None and contacts is not None:
                reason = contacts.violation(frame)
            if progress is not None:
                progress.update(1 if reason is None else settings.steps - step + 1)
            if reason is not None:
                before = _before_blowup(recent, step, spacing, settings)
                return sorted(kept + before, key=lambda item: item[0]), {"step": step, "reason": reason}
            previous_positions = frame.positions
            bare = bare_structure(frame)
            if step % settings.frame_every == 0:
                kept.append((step, bare, False))
            if settings.frames_before_blowup:
                recent.append((step, bare))
    finally:
        steps.close()
    return kept, None


def _before_blowup(
    recent: deque[tuple[int, Atoms]], blowup_step: int, spacing: int, settings: ExploreSettings
) -> list[tuple[int, Atoms, bool]]:
    """Up to ``frames_before_blowup`` of the ``recent`` steps: the one before the blow-up, then
    every ``spacing`` steps back, those kept every ``frame_every`` steps left out."""
    by_step = dict(recent)
    chosen: list[tuple[int, Atoms, bool]] = []
    step = blowup_step - 1
    while step in by_step and len(chosen) < settings.frames_before_blowup:
        if step % settings.frame_every:
            chosen.append((step, by_step[step], True))
        step -= spacing
    return chosen


def bare_structure(frame: Atoms) -> Atoms:
    """Numbers, positions, cell and pbc of ``frame`` (and its molecule indices): no calculator,
    velocities or constraints."""
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions.copy(), cell=frame.cell.copy(), pbc=frame.pbc.copy())
    if "molecule_index" in frame.arrays:
        atoms.arrays["molecule_index"] = frame.arrays["molecule_index"].copy()
    return atoms
