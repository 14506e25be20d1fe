"""MD validation: the drift estimate, g(r) of known cases, NVE with EMT conserving energy, the
Bussi NVT's conserved quantity and blow-ups, and the student's NVT on targets against teacher frames."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlff_distill.contacts import closest_contacts_A
from mlff_distill.evaluation.md_validation import (
    FrameRDFs,
    bussi_run,
    closest_contacts,
    comparison_rdf,
    energy_drift_eV_per_atom_per_ps,
    nve_run,
    radial_distribution,
    rdf_difference,
    target_nvt_rows,
)
from mlff_distill.sampling.dynamics import langevin_frames
from mlff_distill.sampling.on_policy import ContactBounds


def test_drift_recovers_a_known_slope_under_noise():
    rng = np.random.default_rng(0)
    times_ps = np.linspace(0.0, 2.0, 401)
    n_atoms = 50
    energies_eV = -120.0 + 0.004 * n_atoms * times_ps + rng.normal(0.0, 0.01, times_ps.size)
    drift = energy_drift_eV_per_atom_per_ps(times_ps, energies_eV, n_atoms)
    assert drift == pytest.approx(0.004, abs=2e-4)


def test_drift_rejects_a_single_point():
    with pytest.raises(ValueError, match="two or more points"):
        energy_drift_eV_per_atom_per_ps(np.array([0.0]), np.array([1.0]), 4)


def test_fcc_shells_have_the_right_distances_and_coordination():
    a_A = 3.6
    crystal = bulk("Cu", "fcc", a=a_A, cubic=True).repeat(3)
    r, g = radial_distribution([crystal], r_max_A=4.0, n_bins=400)
    dr = r[1] - r[0]
    density = len(crystal) / crystal.get_volume()
    # Coordination: 4 pi rho integral r^2 g dr over each shell.
    running = np.cumsum(4 * np.pi * density * r**2 * g * dr)
    first, second = a_A / np.sqrt(2), a_A
    peaks = r[g > 0]
    assert np.allclose(sorted(set(np.round(peaks, 1))), [round(first, 1), round(second, 1)], atol=0.06)
    assert running[np.searchsorted(r, 0.5 * (first + second))] == pytest.approx(12, rel=1e-3)
    assert running[-1] == pytest.approx(18, rel=1e-3)


def test_pairs_select_species_in_rock_salt():
    a_A = 5.64
    salt = bulk("NaCl", "rocksalt", a=a_A, cubic=True).repeat(2)  # 32 Na, 32 Cl
    density_per_A3 = 32 / salt.get_volume()  # of either species
    na_cl, na_na = a_A / 2, a_A / np.sqrt(2)  # first shells: 6 Cl, then 12 Na around each Na
    for pair, shell_A, r_max_A, neighbours in [
        ((11, 17), na_cl, 0.5 * (na_cl + na_na), 6),
        ((11, 11), na_na, 0.5 * (na_na + a_A), 12),
    ]:
        r, g = radial_distribution([salt], r_max_A=r_max_A, n_bins=300, pairs=pair)
        dr = r[1] - r[0]
        assert r[np.argmax(g)] == pytest.approx(shell_A, abs=dr)
        assert (4 * np.pi * density_per_A3 * r**2 * g * dr).sum() == pytest.approx(neighbours, rel=1e-2)
    with pytest.raises(ValueError, match="pairs"):
        radial_distribution([salt], 4.0, 10, pairs=(11, 8))


def test_ideal_gas_has_g_near_one():
    rng = np.random.default_rng(1)
    side_A = 20.0
    frames = [
        Atoms("Ar1000", positions=rng.uniform(0, side_A, (1000, 3)), cell=[side_A] * 3, pbc=True) for _ in range(4)
    ]
    r, g = radial_distribution(frames, r_max_A=5.0, n_bins=10)
    assert np.all(np.abs(g[2:] - 1.0) < 0.05)


def test_molecular_histogram_is_normalised_per_pair():
    square = Atoms("H4", positions=[[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    r, g = radial_distribution([square], r_max_A=2.0, n_bins=20)
    dr = r[1] - r[0]
    assert (g * dr).sum() == pytest.approx(1.0)  # every pair lies within 2 A
    assert (g * dr)[np.searchsorted(r, 1.0) - 1 : np.searchsorted(r, 1.0) + 1].sum() == pytest.approx(2 / 3)


def test_rdf_difference_integrates_the_gap():
    r = np.linspace(0.0, 5.0, 501)
    assert rdf_difference(r, np.ones_like(r), np.full_like(r, 1.2)) == pytest.approx(1.0)
    assert rdf_difference(r, np.sin(r), np.sin(r)) == 0.0


def test_emt_copper_nve_conserves_energy():
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    run = nve_run(EMT(), crystal, timestep_fs=2.0, steps=200, temperature_K=300, seed=0)
    assert not run["blew_up"] and len(run["times_ps"]) == 201
    drift = energy_drift_eV_per_atom_per_ps(run["times_ps"], run["total_energies_eV"], len(crystal))
    assert abs(drift) < 1e-4
    assert np.ptp(run["total_energies_eV"]) / len(crystal) < 2e-4


def test_nve_flags_a_blow_up():
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    crystal.positions[1] = crystal.positions[0] + [0.3, 0.0, 0.0]  # nearly fused atoms
    run = nve_run(EMT(), crystal, timestep_fs=2.0, steps=50, temperature_K=300, seed=0)
    assert run["blew_up"] and run["reason"]
    assert len(run["times_ps"]) < 51


def test_nvt_frames_and_their_rdf_match_the_lattice_at_low_temperature():
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    frames = list(langevin_frames(EMT(), crystal, 50, timestep_fs=2.0, steps=60, sample_every=20, seed=0))
    assert len(frames) == 3 and not any(frame.constraints for frame in frames)
    # each frame carries the energy (eV) and forces (eV/A) of its own positions, as a single point
    for frame in frames:
        assert isinstance(frame.calc, SinglePointCalculator)
        again = frame.copy()
        again.calc = EMT()
        assert frame.get_potential_energy() == pytest.approx(again.get_potential_energy())
        assert np.allclose(frame.get_forces(), again.get_forces())
    assert not np.allclose(frames[0].positions, crystal.positions)
    r, g_md = radial_distribution(frames, 4.0, 40)
    _, g_lattice = radial_distribution([crystal], 4.0, 40)
    # Thermal broadening only: the first shell stays where the lattice has it.
    assert r[np.argmax(g_md)] == pytest.approx(r[np.argmax(g_lattice)], abs=0.15)
    assert rdf_difference(r, g_md, g_lattice) > 0


def _md_settings(**md):
    from mlff_distill.settings import EvaluateSettings, section_settings

    overrides = {"nve_steps": 20, "nvt_steps": 20, "sample_every": 5, **md}
    return section_settings(EvaluateSettings, "evaluate", {"md": overrides}).md


def _seeds():
    from mlff_distill.sampling.seeds import seed_molecules

    return seed_molecules(["H2O", "CH4"])


def _teacher_and_student():
    from mlff_distill.student import StudentCalculator, StudentPotential
    from mlff_distill.teachers.ase_calculator import AseCalculatorTeacher

    return (
        AseCalculatorTeacher("ase.calculators.emt:EMT", species=(1, 6, 8)),
        StudentCalculator(StudentPotential(species=(1, 6, 8), cutoff_A=4.0, n_features=8)),
    )


def test_md_validation_step_starts_from_teacher_md_frames(single_thread):
    from ase.build import molecule

    from mlff_distill.evaluation.md_validation import md_validation

    frames = []
    for name, temperature_K in [("H2O", 300.0), ("CH4", 800.0), ("CH4", 300.0)]:
        frame = molecule(name)
        frame.info = {"seed": name, "strategy": "md", "temperature_K": temperature_K}
        frames.append(frame)
    result = md_validation(_md_settings(), _seeds(), 0, *_teacher_and_student(), frames)
    assert [(row["model"], row["start"]) for row in result["drift"]] == [
        ("student", "H2O"),
        ("student", "CH4"),
        ("teacher", "H2O"),
    ]
    assert result["drift"][1]["temperature_K"] == 800.0
    assert all(row["time_ps"] == pytest.approx(0.01) for row in result["drift"] if not row["blew_up"])
    rdf = result["rdf"]
    assert rdf["start"] == "CH4" and rdf["n_frames"] == 4 and "pair-distance" in rdf["kind"]
    assert len(rdf["r_A"]) == len(rdf["g_teacher"]) == len(rdf["g_student"]) == 50
    assert rdf["integrated_abs_difference"] == pytest.approx(
        rdf_difference(np.array(rdf["r_A"]), np.array(rdf["g_teacher"]), np.array(rdf["g_student"]))
    )


def test_md_validation_skips_a_teacher_over_its_budget(single_thread):
    from mlff_distill.evaluation.md_validation import md_validation

    result = md_validation(_md_settings(teacher_budget_s=0.0), _seeds(), 0, *_teacher_and_student(), [])
    teacher_rows = [row for row in result["drift"] if row["model"] == "teacher"]
    assert teacher_rows and all(row["reason"].startswith("not run") for row in teacher_rows)
    assert [row["start"] for row in result["drift"] if row["model"] == "student"] == ["H2O", "CH4"]
    assert result["rdf"] is None and "budget" in result["rdf_not_run"]


class HugeForcesAfter(EMT):
    """EMT whose forces become huge from its ``calls``-th call on: a model that blows up."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls, self.done = calls, 0

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.done += 1
        if self.done >= self.calls:
            self.results["forces"] = self.results["forces"] * 1e6


class FreeParticles(Calculator):
    """No interaction at all: zero energy and forces, whatever the distances."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3))}


def test_bussi_run_keeps_its_conserved_quantity_with_emt_copper():
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    run = bussi_run(EMT(), crystal, temperature_K=300, timestep_fs=2.0, steps=300, sample_every=50, seed=0)
    assert not run["blew_up"] and run["reason"] is None
    assert len(run["times_ps"]) == len(run["conserved_eV"]) == 301 and run["time_ps"] == pytest.approx(0.6)
    assert len(run["frames"]) == 6 and all(isinstance(frame.calc, SinglePointCalculator) for frame in run["frames"])
    drift = energy_drift_eV_per_atom_per_ps(run["times_ps"], run["conserved_eV"], len(crystal))
    assert abs(drift) < 1e-4 and np.ptp(run["conserved_eV"]) / len(crystal) < 2e-4
    # the thermostat does work: potential plus kinetic energy alone is far from constant
    total = [frame.get_potential_energy() + frame.get_kinetic_energy() for frame in run["frames"]]
    assert np.ptp(total) > 20 * np.ptp(run["conserved_eV"])
    assert 100 < run["mean_temperature_K"] < 400


def test_a_labelled_bussi_run_logs_its_progress(monkeypatch, caplog):
    monkeypatch.setattr("mlff_distill.evaluation.md_validation.PROGRESS_EVERY_S", 0.0)
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True)
    with caplog.at_level("INFO", logger="mlff_distill.evaluation.md_validation"):
        bussi_run(EMT(), crystal, 300, timestep_fs=2.0, steps=5, sample_every=5, seed=0, label="cu NVT")
        bussi_run(EMT(), crystal, 300, timestep_fs=2.0, steps=5, sample_every=5, seed=0)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 5 and lines[0].startswith("cu NVT: step 1 of 5 (0.00 ps)")
    assert lines[-1].startswith("cu NVT: step 5 of 5 (0.01 ps)") and "steps/s" in lines[-1]


def test_bussi_run_stops_at_the_first_huge_force():
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    run = bussi_run(HugeForcesAfter(calls=25), crystal, 300, timestep_fs=2.0, steps=200, sample_every=5, seed=0)
    assert run["blew_up"] and run["reason"].startswith("force of")
    assert len(run["conserved_eV"]) < 30 and run["time_ps"] < 0.06
    assert len(run["frames"]) <= (len(run["conserved_eV"]) - 1) // 5


def test_bussi_run_stops_when_two_atoms_come_too_close():
    pair = Atoms("Ar2", positions=[[0, 0, 0], [0.5, 0, 0]], cell=[8.0] * 3, pbc=True)
    stopped = bussi_run(FreeParticles(), pair, 300, timestep_fs=1.0, steps=10, sample_every=1, seed=0)
    assert stopped["blew_up"] and stopped["reason"] == "atoms 0.50 A apart" and stopped["time_ps"] == 0.0
    allowed = bussi_run(FreeParticles(), pair, 300, 1.0, 10, 1, seed=0, min_distance_A=0.1)
    assert not allowed["blew_up"] and len(allowed["frames"]) == 10


def test_bussi_run_stops_at_a_contact_closer_than_the_labels_allow():
    """Copper labels with neighbours 2.55 A apart and fraction 1: a kept frame whose thermal motion
    brings two neighbours closer is a blow-up; at fraction 0.8 the run goes on."""
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True)
    labels = ContactBounds(closest_contacts_A([crystal], 4.0), 1.0)
    stopped = bussi_run(EMT(), crystal, 300, 2.0, 100, 10, seed=0, contacts=labels)
    assert stopped["blew_up"] and stopped["reason"].startswith("Cu-Cu 2.") and "(2.55 A)" in stopped["reason"]
    assert len(stopped["frames"]) == round(stopped["time_ps"] / 0.002) // 10 - 1
    loose = ContactBounds(labels.closest_A, 0.8)
    assert not bussi_run(EMT(), crystal, 300, 2.0, 100, 10, seed=0, contacts=loose)["blew_up"]


def _dimer_gas(rng, n_dimers: int, side_A: float, bond_A: float = 1.0) -> Atoms:
    """Dimers at random places and orientations, uncorrelated with each other."""
    centres = rng.uniform(0, side_A, (n_dimers, 1, 3))
    axes = rng.normal(size=(n_dimers, 1, 3))
    axes *= 0.5 * bond_A / np.linalg.norm(axes, axis=-1, keepdims=True)
    positions = np.concatenate([centres - axes, centres + axes], axis=1).reshape(-1, 3)
    gas = Atoms(f"N{2 * n_dimers}", positions=positions, cell=[side_A] * 3, pbc=True)
    gas.arrays["molecule_index"] = np.repeat(np.arange(n_dimers), 2)
    return gas


def test_comparison_rdf_counts_pairs_between_molecules_normalised_per_pair():
    rng = np.random.default_rng(0)
    frames = [_dimer_gas(rng, 400, 20.0) for _ in range(3)]
    r, g, kind = comparison_rdf(frames, r_max_A=5.0)
    assert kind == "g(r), between molecules" and r[-1] <= 5.0
    # molecules placed independently: g = 1 between molecules at every distance, the bond left out
    assert np.abs(g[r > 1.0] - 1.0).max() < 0.1
    assert np.sum(r**2 * g) / np.sum(r**2) == pytest.approx(1.0, abs=0.01)  # all pairs within 5 A
    for frame in frames:
        del frame.arrays["molecule_index"]
    r, g_all, kind = comparison_rdf(frames, r_max_A=5.0)
    assert kind == "g(r), all pairs" and r[np.argmax(g_all)] == pytest.approx(1.0, abs=0.03)
    # the smoothing keeps the pairs: the bond's peak holds one neighbour per atom
    density = 2 * 400 / 20.0**3
    bond = np.abs(r - 1.0) < 0.45
    assert np.sum(4 * np.pi * density * r[bond] ** 2 * (g_all[bond] - g[bond])) * (r[1] - r[0]) == pytest.approx(
        1.0, rel=0.03
    )
    r, g_molecule, kind = comparison_rdf([molecule("CH4")], r_max_A=3.0)
    assert kind.startswith("pair-distance density") and np.sum(g_molecule) * (r[1] - r[0]) == pytest.approx(1.0)


def test_the_g_of_a_subset_of_frames_is_that_of_those_frames_alone():
    rng = np.random.default_rng(1)
    frames = [_dimer_gas(rng, 60 + 20 * k, 12.0) for k in range(5)]  # different densities
    per_frame = FrameRDFs.of(frames, r_max_A=5.0)
    for subset in ([0, 1], [2, 3, 4], [4]):
        r, g = per_frame.mean(subset)
        r_alone, g_alone, kind = comparison_rdf([frames[i] for i in subset], r_max_A=5.0)
        assert kind == per_frame.kind and np.array_equal(r, r_alone)
        assert np.allclose(g, g_alone, rtol=1e-12, atol=1e-12)
    assert not np.allclose(per_frame.mean([0])[1], per_frame.mean([4])[1])  # the frames differ


def _cu_frames(a_A: float, temperature_K: float, seeds: tuple[int, ...]) -> list[Atoms]:
    frames = []
    for seed in seeds:
        crystal = bulk("Cu", "fcc", a=a_A, cubic=True).repeat(2)
        for frame in langevin_frames(EMT(), crystal, temperature_K, 2.0, 200, 20, seed):
            frame.info["group"] = f"trajectory {seed}"
            frames.append(frame)
    return frames[::2][2:] + frames[1::2][2:]  # some equilibration


def test_target_nvt_rows_compare_the_students_g_of_r_with_the_teachers(single_thread, caplog):
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    settings = _md_settings(nvt_ps=0.4, timestep_fs=2.0, sample_every=10, rdf_r_max_A=4.5)
    same, expanded = _cu_frames(3.6, 300.0, (1, 2)), _cu_frames(3.75, 300.0, (3,))
    starts = [("cu", 300.0, crystal), ("cu-expanded", 300.0, crystal), ("cu-unseen", 300.0, crystal)]
    with caplog.at_level("INFO", logger="mlff_distill.evaluation.md_validation"):
        rows = target_nvt_rows(EMT(), starts, {("cu", 300.0): same, ("cu-expanded", 300.0): expanded}, settings, seed=0)
    done = [record.getMessage() for record in caplog.records if "reached" in record.getMessage()]
    assert done[1].startswith("NVT 2 of 3, cu-expanded at 300 K (32 atoms): the student reached 0.4 ps in ")
    assert len(done) == 3 and all(line.endswith("no blow-up") for line in done)
    assert [(row["target"], row["temperature_K"]) for row in rows] == [(t, 300.0) for t, _, _ in starts]
    for row in rows:
        assert row["n_atoms"] == 32 and not row["blew_up"] and row["time_ps"] == pytest.approx(0.4)
        assert abs(row["conserved_drift_eV_per_atom_per_ps"]) < 1e-3
        assert row["n_student_frames"] == 16  # 20 frames, the first fifth left out
        assert 10 < row["md_steps_per_s"] < 1e6  # 200 EMT steps of 32 atoms: well under a second
    good, wrong, unseen = rows
    assert good["n_teacher_frames"] == len(same) and good["rdf_kind"] == "g(r), all pairs"
    assert len(good["r_A"]) == len(good["g_teacher"]) == len(good["g_student"])
    assert good["rdf_integrated_abs_difference"] == pytest.approx(
        rdf_difference(np.array(good["r_A"]), np.array(good["g_teacher"]), np.array(good["g_student"]))
    )
    assert good["rdf_integrated_abs_difference"] < 0.3 and good["rdf_teacher_halves_difference"] < 0.3
    assert wrong["rdf_integrated_abs_difference"] > 5 * good["rdf_integrated_abs_difference"]
    assert unseen["rdf_integrated_abs_difference"] is None and unseen["rdf_not_run"] == "no teacher MD frames"
    for row in rows:  # Cu-Cu at 2.55 A in the crystal: its thermal closest contacts lie a little below
        assert 2.0 < row["closest_contacts_A"]["Cu-Cu"]["student"] < 2.55
    assert good["closest_contacts_A"]["Cu-Cu"]["teacher"] < wrong["closest_contacts_A"]["Cu-Cu"]["teacher"]
    assert unseen["closest_contacts_A"]["Cu-Cu"]["teacher"] is None and unseen["closest_contacts"].endswith(" / -")


def test_target_nvt_rows_in_two_processes_are_those_of_one(single_thread):
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    settings = _md_settings(nvt_ps=0.2, timestep_fs=2.0, sample_every=10, rdf_r_max_A=4.5)
    starts = [("cu", 300.0, crystal), ("cu", 600.0, crystal)]
    frames = {("cu", 300.0): _cu_frames(3.6, 300.0, (1, 2))}
    here = target_nvt_rows(EMT(), starts, frames, settings, seed=3)
    shared = target_nvt_rows(EMT, starts, frames, settings, seed=3, processes=2)  # EMT() made in each worker
    for one, two in zip(here, shared):
        assert {k: v for k, v in one.items() if k != "md_steps_per_s"} == {
            k: v for k, v in two.items() if k != "md_steps_per_s"
        }
    assert here[0]["g_student"] != here[1]["g_student"]  # two runs of their own, in order


def test_closest_contacts_of_student_and_teacher_frames():
    student = [Atoms("H2O", positions=[[0, 0, 0], [1.1, 0, 0], [0, 2.0, 0]])]
    teacher = [Atoms("H2", positions=[[0, 0, 0], [1.35, 0, 0]]), Atoms("H2", positions=[[0, 0, 0], [1.5, 0, 0]])]
    contacts = closest_contacts(student, teacher)
    assert contacts["closest_contacts_A"]["H-H"] == {"student": pytest.approx(1.1), "teacher": pytest.approx(1.35)}
    assert contacts["closest_contacts_A"]["H-O"]["teacher"] is None
    assert contacts["closest_contacts"] == "H-H 1.10 / 1.35, H-O 2.00 / -"


def test_target_nvt_rows_take_the_teachers_own_nvt_as_the_g_of_r_reference_when_asked(single_thread):
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    settings = _md_settings(nvt_ps=0.4, timestep_fs=2.0, sample_every=10, rdf_r_max_A=4.5, teacher_nvt_ps=0.6)
    expanded = {("cu", 300.0): _cu_frames(3.75, 300.0, (3,))}  # a wrong reference, replaced by the teacher's NVT
    (own,) = target_nvt_rows(EMT(), [("cu", 300.0, crystal)], expanded, settings, seed=0, teacher_calculator=EMT())
    (short,) = target_nvt_rows(EMT(), [("cu", 300.0, crystal)], expanded, settings, seed=0)
    assert own["rdf_reference"] == "the teacher's own NVT, 0.6 ps" and short["rdf_reference"].startswith("the sample")
    assert own["teacher_nvt_time_ps"] == pytest.approx(0.6) and not own["teacher_nvt_blew_up"]
    assert own["n_teacher_frames"] == 24 and own["teacher_md_steps_per_s"] > 10  # 30 frames, the first fifth left out
    assert own["rdf_integrated_abs_difference"] < short["rdf_integrated_abs_difference"] / 5
    assert 0 < own["rdf_student_halves_difference"] < 0.3 and 0 < own["rdf_teacher_halves_difference"] < 0.3
