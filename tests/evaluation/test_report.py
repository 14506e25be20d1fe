"""The HTML report built from small real inputs: every section, and "not run" where inputs are missing."""

import numpy as np
from ase.units import GPa

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation import plots
from mlff_distill.evaluation.accuracy import accuracy
from mlff_distill.evaluation.gates import check_gates
from mlff_distill.evaluation.metrics import worst_force_errors
from mlff_distill.evaluation.report import build_report
from mlff_distill.teachers.base import TeacherIdentity

SECTIONS = (
    "Summary",
    "Accuracy on the test split",
    "Accuracy figures",
    "Speed",
    "MD validation",
    "Teacher",
    "Data provenance",
    "Config",
)


def periodic_pair() -> tuple[LabeledArrays, dict]:
    """Two periodic two-atom cells (H, O) with stress, and predictions a little off."""
    rng = np.random.default_rng(1)
    stress = np.stack([np.eye(3) * GPa, 2 * np.eye(3) * GPa])
    reference = LabeledArrays(
        numbers=np.array([1, 8, 1, 8]),
        positions_A=rng.uniform(0, 3, (4, 3)),
        forces_eV_per_A=rng.normal(size=(4, 3)),
        energy_eV=np.array([-10.0, -11.0]),
        atoms_ptr=np.array([0, 2, 4]),
        cell_A=np.stack([np.eye(3) * 3.0] * 2),
        pbc=np.ones((2, 3), dtype=bool),
        stress_eV_per_A3=stress,
    )
    predictions = {
        "energy_eV": reference.energy_eV + 0.01,
        "forces_eV_per_A": reference.forces_eV_per_A + 0.1,
        "stress_eV_per_A3": stress * 1.1,
    }
    return reference, predictions


def test_full_report_has_every_section_with_figures_and_the_untrained_teacher(tmp_path):
    reference, predictions = periodic_pair()
    metrics = accuracy(reference, predictions, energy_std_eV=np.array([0.02, 0.04]))
    metrics.update(
        teacher="orb-v3 (untrained teacher)",
        student="StudentPotential (10 parameters)",
        n_test=2,
        n_timed=2,
        teacher_s_per_structure=0.01,
        student_s_per_structure=0.002,
        speedup=5.0,
        inference_path="eager",
        per_kind={
            "md 300 K": {"n_structures": 1, "force_rel_rmse": 0.02},
            "rattle": {"n_structures": 1, "force_rel_rmse": 0.09},
        },
        worst_structures=worst_force_errors(
            reference, predictions["forces_eV_per_A"], [{"sample_index": 3}, {"sample_index": 5}]
        ),
        teacher_rotation={"force_rel_change": 1.04, "invariant_student_floor": 0.52, "n_structures": 2},
        reference_calibration={
            "shift_eV": {"H": 0.0066, "O": -0.0195},
            "n_target_md": 80,
            "n_other": 1207,
            "target_md_energy_mae_per_atom_eV_before": 0.00144,
            "target_md_energy_mae_per_atom_eV_after": 0.00068,
            "other_energy_mae_per_atom_eV_before": 0.00173,
            "other_energy_mae_per_atom_eV_after": 0.0031,
        },
        speed=[
            {"n_atoms": 64, "teacher_ms": 20.0, "student_ms": 2.0},
            {"n_atoms": 512, "teacher_ms": 150.0, "student_ms": 9.0},
        ],
        md_validation={
            "drift": [{"model": "student", "drift_eV_per_atom_per_ps": 1e-4, "blew_up": False}],
            "rdf": {
                "r_A": [1.0, 2.0, 3.0],
                "g_teacher": [0.0, 2.0, 1.0],
                "g_student": [0.0, 1.8, 1.0],
                "integrated_abs_difference": 0.2,
            },
        },
    )
    metrics["gates"] = check_gates(metrics, {"force_rel_rmse": 0.03, "stress_rel_error": 0.5})
    metrics["gates_passed"] = False
    items = plots.quantities(
        reference, predictions["energy_eV"], predictions["forces_eV_per_A"], predictions["stress_eV_per_A3"]
    )
    assert [label for label, *_ in items][-1] == "stress component (GPa)"
    figures = {
        "parity": plots.parity_plot(items, tmp_path / "parity.png"),
        "errors": plots.error_histograms(items, tmp_path / "errors.png"),
        "speed": plots.speed_plot(metrics["speed"], tmp_path / "speed.png"),
        "rdf": plots.rdf_plot(
            np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 1.0]), np.array([0.0, 1.8, 1.0]), tmp_path / "rdf.png"
        ),
    }
    teacher = TeacherIdentity(
        name="orb-v3",
        kind="orb",
        source="random",
        weights_sha256="ab" * 32,
        cutoff_A=6.0,
        species=(1, 8),
        conservative=True,
        trained=False,
    )
    provenance = {
        "label store": "/data/labels.zarr",
        "structures per split": {"train": 8, "val": 1, "test": 2},
        "sampled structures per strategy": {"md": 6, "rattle": 5},
    }
    page = build_report(
        tmp_path / "report.html", metrics, {"run_name": "tiny", "seed": 3}, teacher.as_dict(), provenance, figures
    ).read_text()
    for section in SECTIONS:
        assert f">{section}</h2>" in page
    assert page.count("data:image/png;base64,") == 4 and "not run" not in page
    assert "untrained teacher" in page and "ab" * 32 in page
    assert "These 2 test structures carry 100 % of the summed squared force error" in page
    assert "differ from the turned originals by 104 %" in page and "teacher: 52 %" in page
    assert "shifted by H +6.6, O -19.5 meV per atom" in page and "from 1.44 to 0.68 meV/atom" in page
    assert "other 1207 training structures" in page and "from 1.73 to 3.10 meV/atom" in page
    assert "FAIL" in page and "pass" in page  # force gate fails, stress gate passes
    assert "integrated_abs_difference" in page and "/data/labels.zarr" in page
    assert "rattle" in page and "run_name: tiny" in page and ">512<" in page


def test_missing_inputs_say_not_run(tmp_path):
    metrics = {"teacher": "ani1x", "student": "s", "n_test": 3, "force_rel_rmse": 0.2}
    page = build_report(tmp_path / "report.html", metrics, {"run_name": "bare"}, None, None, {}).read_text()
    for section in SECTIONS:
        assert f">{section}</h2>" in page
    # parity, histograms, speed at sizes, MD, teacher, provenance, per species, per kind
    assert page.count("not run") == 9
    assert "no gates configured" in page and "untrained" not in page


def test_targets_fill_their_tables_and_figures_and_a_speedup_needs_its_accuracy(tmp_path):
    reference, predictions = periodic_pair()
    metrics = accuracy(reference, predictions)
    r = np.linspace(0.0, 5.0, 251)
    curve = np.exp(-((r - 2.8) ** 2) / 0.05) + (r > 2.5)
    metrics.update(
        teacher="ani1x",
        student="StudentPotential",
        n_test=2,
        teacher_implementations={"labeling": "fennol", "others": ["torchani-2.9-cell-list"], "missing": None},
        accuracy_by_target=[
            {
                "target": "water",
                "temperature_K": 300.0,
                "n_structures": 2,
                "force_rel_rmse": 0.0252,
                "force_mae_eV_per_A": 0.05,
                "energy_mae_per_atom_eV": 0.0011,
            },
        ],
        speed=[
            {
                "target": "water",
                "system": "water",
                "n_atoms": 96,
                "teacher_ms": 45.0,
                "teacher_implementations_ms": {"fennol": 45.0, "torchani-2.9-cell-list": 30.0},
                "teacher_implementations_force_rel_diff": {"torchani-2.9-cell-list": 4.2e-6},
                "teacher_fastest": "torchani-2.9-cell-list",
                "teacher_fastest_ms": 30.0,
                "student_ms": 2.0,
                "speedup": 15.0,
                "speedup_over_labeling_teacher": 22.5,
                "force_rel_rmse": 0.0261,
                "energy_mae_per_atom_eV": 0.001,
                "all_cores_threads": 2,
                "all_cores_teacher_fastest_ms": 21.0,
                "all_cores_student_ms": 1.75,
                "all_cores_speedup": 12.0,
                "exported_student_ms": 1.81,
                "exported_over_student": 0.905,
            },
            {
                "target": "water",
                "system": "water",
                "n_atoms": 768,
                "teacher_ms": None,
                "teacher_implementations_ms": {"torchani-2.9-cell-list": 250.0},
                "teacher_implementations_not_timed": {
                    "fennol": {"times_fastest": 1.5, "fastest": "torchani-2.9-cell-list", "at_n_atoms": 96}
                },
                "student_ms": 15.0,
                "speedup": 16.67,
                "all_cores_speedup": 17.89,
            },
        ],
        target_nvt=[
            {
                "target": "water",
                "temperature_K": 350.0,
                "n_atoms": 96,
                "time_ps": 5.0,
                "blew_up": False,
                "reason": None,
                "conserved_drift_eV_per_atom_per_ps": 2e-5,
                "mean_temperature_K": 349.0,
                "n_student_frames": 800,
                "n_teacher_frames": 40,
                "rdf_kind": "g(r), between molecules",
                "rdf_integrated_abs_difference": 0.0431,
                "rdf_teacher_halves_difference": 0.0777,
                "rdf_not_run": None,
                "r_A": r.tolist(),
                "g_teacher": curve.tolist(),
                "g_student": (1.02 * curve).tolist(),
            },
        ],
    )
    figures = plots.write_figures(tmp_path, reference, predictions, metrics)
    assert set(figures) == {"parity", "errors", "speed", "rdf_target_water"}
    page = build_report(tmp_path / "report.html", metrics, {"run_name": "targets"}, None, None, figures).read_text()
    assert "relative RMS force error (%)" in page and ">2.52<" in page  # per target, in %
    assert ">15<" in page and ">2.61<" in page  # a speed-up beside the error on that system
    assert "16.67" not in page and "accuracy not measured</td>" in page  # none without it
    # every implementation of the teacher, its force difference from the labeling one, the fastest
    assert "torchani-2.9-cell-list (ms)" in page and ">45<" in page and ">22.5<" in page
    assert "torchani-2.9-cell-list: force difference (%)" in page and ">0.00042<" in page
    # an implementation far slower on a smaller system of the target is not timed on its larger ones
    assert ">not timed: 1.50x the fastest at 96 atoms<" in page and ">250<" in page
    assert "speed-up over the fastest teacher" in page
    assert "speed-up over the fastest teacher, all cores" in page and ">12<" in page and ">1.75<" in page
    assert "17.89" not in page  # nor on all cores
    # the summary's range counts only systems with their accuracy
    assert "15.0-15.0x on one thread; 12.0-12.0x on all 2 cores; force error there 2.6-2.6 % (1 systems)" in page
    assert "accuracy not measured on 1 of 2 systems, not counted" in page
    assert "exported student, AOTInductor (ms)" in page and ">1.81<" in page and ">0.905<" in page
    assert ">0.0431<" in page and ">0.0777<" in page and "g(r), between molecules" in page
    assert page.count("data:image/png;base64,") == 4 and "no targets" not in page
    assert "0.02, 0.04" not in page and "[0.0" not in page  # the curves are in the figure, not the table


def test_a_run_without_targets_says_so(tmp_path):
    reference, predictions = periodic_pair()
    metrics = accuracy(reference, predictions)
    metrics.update(md_validation={"drift": [{"model": "student", "blew_up": False}], "rdf": None})
    page = build_report(tmp_path / "report.html", metrics, {"run_name": "plain"}, None, None, {}).read_text()
    assert page.count("no targets in this run") == 2  # accuracy per target, the NVT on targets
    assert "NVE energy drift" in page
