"""Labeling in shards with the real ANI-1x teacher on a 2-worker Dask cluster, and resuming;
structures a real (EMT-based, tests/failing_calculator.py) teacher fails on; on-policy rounds that
label only their new structures and combine the earlier rounds' shards. The choice of
scheduler is tested in test_cluster.py.

``ani1x_teacher_settings`` and ``ani1x_teacher`` come from conftest.py (skipped without the files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from mlff_distill.labeling.shards import LabelingFailedError, label_structures, plan_shards, shards_in
from mlff_distill.settings import TeacherSettings, section_settings
from mlff_distill.store import FAILURES_FILE, marker_path, read_index_columns, read_labels, read_marker, store_attrs

MOLECULES = ["CH4", "H2O", "NH3", "C2H6", "C2H4", "HCN", "CH3OH", "H2CO", "CH3CN", "HCOOH", "N2H4", "H3CNH2"]


def rattled_molecules() -> list:
    """12 small H/C/N/O molecules, rattled, with the info keys labeling needs."""
    structures = []
    for index, name in enumerate(MOLECULES):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=index)
        atoms.info.update(split=["train", "val", "test"][index % 3], group=index // 4, sample_index=index)
        structures.append(atoms)
    return structures


@pytest.fixture(scope="module")
def labeled(ani1x_teacher_settings, tmp_path_factory):
    """A first labeling run: 12 molecules, shards of 4, 2 workers."""
    root = tmp_path_factory.mktemp("label")
    reports = []
    summary = label_structures(
        rattled_molecules(),
        ani1x_teacher_settings,
        root / "shards",
        root / "labels.zarr",
        n_workers=2,
        shard_size=4,
        attrs={"teacher": "fennol-pmc/ani1x"},
        progress=reports.append,
    )
    return root, summary, reports


def relabel(root: Path, teacher: TeacherSettings, n_workers: int = 2) -> dict:
    return label_structures(
        rattled_molecules(),
        teacher,
        root / "shards",
        root / "labels.zarr",
        n_workers=n_workers,
        shard_size=4,
        attrs={"teacher": "fennol-pmc/ani1x"},
    )


def smaller_batches(teacher: TeacherSettings) -> TeacherSettings:
    """Changed teacher settings (same labels): the in-process runs below share one teacher of these."""
    return dataclasses.replace(teacher, batch_size=8)


def test_plan_shards():
    assert plan_shards(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert plan_shards(0, 4) == []


def test_missing_info_key_names_the_structure(tmp_path):
    structures = rattled_molecules()
    del structures[5].info["group"]
    with pytest.raises(ValueError, match=r"structure 5 has no info\['group'\]"):
        label_structures(
            structures,
            ase_teacher_settings("ase.calculators.emt:EMT"),
            tmp_path / "shards",
            tmp_path / "labels.zarr",
            n_workers=2,
            shard_size=4,
            attrs={},
        )
    assert not (tmp_path / "shards").exists()


def test_store_holds_teacher_labels_in_input_order(labeled, ani1x_teacher):
    root, summary, reports = labeled
    assert (summary["shards_labeled"], summary["shards_reused"], summary["n_structures"]) == (3, 0, 12)
    assert [r["structures_done"] for r in reports] == [4, 8, 12]
    assert reports[-1]["eta_seconds"] == 0 and all(r["structures_per_second"] > 0 for r in reports)

    structures = rattled_molecules()
    direct = ani1x_teacher.compute(structures)
    labels = read_labels(root / "labels.zarr")
    np.testing.assert_array_equal(labels.numbers, np.concatenate([a.numbers for a in structures]))
    np.testing.assert_array_equal(labels.positions_A, np.concatenate([a.positions for a in structures]))
    np.testing.assert_allclose(labels.energy_eV, direct.energy_eV, rtol=1e-6)
    np.testing.assert_allclose(labels.forces_eV_per_A, direct.forces_eV_per_A, rtol=1e-4, atol=1e-4)
    assert store_attrs(root / "labels.zarr")["teacher"] == "fennol-pmc/ani1x"
    assert read_labels(root / "labels.zarr", "val").n_structures == 4


def test_rerun_reuses_every_shard(labeled, ani1x_teacher_settings):
    root, _, _ = labeled
    before = read_labels(root / "labels.zarr").energy_eV
    summary = relabel(root, ani1x_teacher_settings)
    assert (summary["shards_labeled"], summary["shards_reused"]) == (0, 3)
    np.testing.assert_array_equal(read_labels(root / "labels.zarr").energy_eV, before)


def test_changed_teacher_config_relabels_every_shard_in_process(labeled, ani1x_teacher_settings):
    root, _, _ = labeled
    before = read_labels(root / "labels.zarr").energy_eV
    summary = relabel(root, smaller_batches(ani1x_teacher_settings), n_workers=0)
    assert (summary["shards_labeled"], summary["shards_reused"]) == (3, 0)
    np.testing.assert_allclose(read_labels(root / "labels.zarr").energy_eV, before, rtol=1e-6)


def test_missing_marker_relabels_only_that_shard(labeled, ani1x_teacher_settings):
    """In this process, with the teacher of the test above (loaded once: no second Dask cluster)."""
    root, _, _ = labeled
    teacher = smaller_batches(ani1x_teacher_settings)
    relabel(root, teacher, n_workers=0)  # all reused after the test above; alone, labels all with ``teacher``
    before = read_labels(root / "labels.zarr").energy_eV
    shard = root / "shards" / "shard-00000004-00000008.zarr"
    marker_path(shard).unlink()
    summary = relabel(root, teacher, n_workers=0)
    assert (summary["shards_labeled"], summary["shards_reused"]) == (1, 2)
    assert [s["shard"] for s in summary["shards"]] == [shard.name]
    np.testing.assert_allclose(read_labels(root / "labels.zarr").energy_eV, before, rtol=1e-6)


def ase_teacher_settings(factory: str, **kwargs) -> TeacherSettings:
    """An ASE calculator as the teacher: ``factory`` called with ``kwargs``."""
    section = {"kind": "ase", "name": "emt", "factory": factory, "kwargs": kwargs}
    return section_settings(TeacherSettings, "teacher", section)


def poisoned_molecules() -> list:
    """`rattled_molecules` with samples 4, 5 and 9 raising and 6, 7 giving NaN in `FailingEMT`:
    shard 4-8 (of 4) fails entirely; shard 8-12 loses one structure."""
    structures = rattled_molecules()
    for index, poison in {4: "raise", 5: "raise", 6: "nan", 7: "nan", 9: "raise"}.items():
        structures[index].info["poison"] = poison
    return structures


def test_failed_structures_are_left_out_recorded_and_not_retried(tmp_path):
    config = ase_teacher_settings("failing_calculator:FailingEMT")
    store = tmp_path / "labels.zarr"

    def label(max_failed_fraction):
        return label_structures(
            poisoned_molecules(),
            config,
            tmp_path / "shards",
            store,
            n_workers=0,
            shard_size=4,
            attrs={},
            max_failed_fraction=max_failed_fraction,
        )

    summary = label(0.5)
    assert (summary["n_failed"], summary["n_stored"], summary["shards_labeled"]) == (5, 7, 3)
    assert summary["failed_fraction"] == pytest.approx(5 / 12)
    failures = {f["sample_index"]: f for f in summary["failures"]}
    assert sorted(failures) == [4, 5, 6, 7, 9]
    assert failures[4]["error"] == "TeacherBlewUp" and "cannot handle" in failures[4]["reason"]
    assert failures[6] == {"sample_index": 6, "error": None, "reason": "non-finite energy/forces"}
    assert json.loads((tmp_path / FAILURES_FILE).read_text()) == summary["failures"]
    assert [s["n_failed"] for s in summary["shards"]] == [0, 4, 1]
    assert read_marker(tmp_path / "shards" / "shard-00000004-00000008.zarr")["n_structures"] == 0

    kept = [a for a in rattled_molecules() if a.info["sample_index"] not in failures]
    labels = read_labels(store)
    assert labels.n_structures == 7
    for index, atoms in enumerate(kept):
        atoms.calc = EMT()
        np.testing.assert_allclose(labels.energy_eV[index], atoms.get_potential_energy(), rtol=1e-12)
        np.testing.assert_allclose(
            labels.forces_eV_per_A[labels.atoms_ptr[index] : labels.atoms_ptr[index + 1]],
            atoms.get_forces(),
            atol=1e-12,
        )

    # A shard with failures is complete: the rerun reuses it, and the limit is checked after combining.
    store.rename(tmp_path / "old.zarr")
    with pytest.raises(
        LabelingFailedError,
        match=r"5 of 12 structures \(41.7%\) failed.*sample 4: "
        r"TeacherBlewUp: cannot handle",
    ) as raised:
        label(0.4)
    assert (raised.value.summary["shards_labeled"], raised.value.summary["shards_reused"]) == (0, 3)
    assert read_labels(store).n_structures == 7


KILL_SCRIPT = """
import json, sys
from ase.io import read
from mlff_distill.labeling.shards import label_structures
from mlff_distill.settings import TeacherSettings
structures, config, root = read(sys.argv[1], ":"), TeacherSettings(**json.loads(sys.argv[2])), sys.argv[3]
label_structures(structures, config, root + "/shards", root + "/labels.zarr", n_workers=0,
                 shard_size=2, attrs={})
"""


def test_killed_run_and_corrupt_shard_resume_to_the_uninterrupted_store(tmp_path):
    """SIGKILL a labeling run after its second shard, corrupt one finished shard, rerun: the store
    equals an uninterrupted run's, each structure exactly once, only the missing shards labeled."""
    from ase.io import read, write

    config = ase_teacher_settings("failing_calculator:SlowEMT", delay_s=0.25)
    write(tmp_path / "structures.extxyz", rattled_molecules())
    structures = read(tmp_path / "structures.extxyz", ":")  # exactly what the killed run reads
    reference = label_structures(  # the same calculator, without the delay that makes room for the kill
        structures,
        ase_teacher_settings("failing_calculator:SlowEMT", delay_s=0.0),
        tmp_path / "ref" / "shards",
        tmp_path / "ref" / "labels.zarr",
        n_workers=0,
        shard_size=2,
        attrs={},
    )
    assert reference["shards_labeled"] == 6

    run = tmp_path / "run"
    run.mkdir()
    tests_dir = str(Path(__file__).resolve().parents[1])  # where failing_calculator.py is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            str(tmp_path / "structures.extxyz"),
            json.dumps(dataclasses.asdict(config)),
            str(run),
        ],
        env=env,
    )
    deadline = time.monotonic() + 120
    while len(list((run / "shards").glob("*.done.json"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "labeling ended before the kill"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted((run / "shards").glob("*.done.json"))
    assert 2 <= len(finished) < 6 and not (run / "labels.zarr").exists()

    first_shard = Path(str(finished[0]).removesuffix(".done.json"))
    chunk = next(
        p for p in (first_shard / "structures" / "energy_eV").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(bytes(len(chunk.read_bytes())))  # same size, wrong content

    resumed = label_structures(
        structures, config, run / "shards", run / "labels.zarr", n_workers=0, shard_size=2, attrs={}
    )
    assert resumed["shards_reused"] == len(finished) - 1
    assert resumed["shards_labeled"] == 6 - resumed["shards_reused"]
    got, want = read_labels(run / "labels.zarr"), read_labels(tmp_path / "ref" / "labels.zarr")
    assert got.n_structures == len(structures) == want.n_structures
    for name in ("numbers", "positions_A", "forces_eV_per_A", "energy_eV", "atoms_ptr", "cell_A"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))


def test_periodic_structures_get_stress_molecules_nan(tmp_path):
    """Stress labels (eV/Angstrom^3, ASE's sign) for a periodic cell; NaN for a molecule."""
    from ase.build import bulk

    config = ase_teacher_settings("ase.calculators.emt:EMT")
    copper = bulk("Cu", cubic=True) * (2, 1, 1)
    copper.rattle(0.05, seed=1)
    copper.cell *= 0.98
    water = molecule("H2O")
    for index, atoms in enumerate((copper, water)):
        atoms.info.update(split="train", group=index, sample_index=index)
    label_structures(
        [copper, water], config, tmp_path / "shards", tmp_path / "labels.zarr", n_workers=0, shard_size=2, attrs={}
    )
    labels = read_labels(tmp_path / "labels.zarr")
    expected = copper.copy()
    expected.calc = EMT()
    np.testing.assert_allclose(labels.stress_eV_per_A3[0], expected.get_stress(voigt=False), atol=1e-12)
    assert expected.get_stress()[0] < 0  # compressed: ASE's sign
    assert np.isnan(labels.stress_eV_per_A3[1]).all()


def label_round(root: Path, structures: list, teacher: TeacherSettings, previous=(), shard_size: int = 4) -> dict:
    """One round's labeling into ``root``/shards and ``root``/labels.zarr, in this process."""
    return label_structures(
        structures,
        teacher,
        root / "shards",
        root / "labels.zarr",
        n_workers=0,
        shard_size=shard_size,
        attrs={},
        previous_shards=previous,
    )


def test_a_round_labels_only_its_new_structures_and_its_store_holds_all_rounds(tmp_path):
    """Round 0 labels samples 0-7; round 1 labels only 8-11 (two shards) and combines round 0's
    shards as they are; a killed round 1 resumes without relabeling anything of round 0."""
    teacher = ase_teacher_settings("ase.calculators.emt:EMT")
    structures = rattled_molecules()
    label_round(tmp_path / "r0", structures[:8], teacher)
    previous = shards_in(tmp_path / "r0" / "shards")
    assert [p.name for p in previous] == ["shard-00000000-00000004.zarr", "shard-00000004-00000008.zarr"]
    untouched = {p: (marker_path(p).stat().st_mtime_ns, read_marker(p)) for p in previous}

    summary = label_round(tmp_path / "r1", structures[8:], teacher, previous, shard_size=2)
    assert (summary["shards_labeled"], summary["shards_reused"]) == (2, 0)
    assert sum(s["n_structures"] for s in summary["shards"]) == 4  # the teacher saw only the new ones
    assert (summary["n_structures"], summary["n_previous"], summary["n_store"]) == (4, 8, 12)
    labels = read_labels(tmp_path / "r1" / "labels.zarr")
    assert labels.n_structures == 12
    assert read_index_columns(tmp_path / "r1" / "labels.zarr")["sample_index"].tolist() == list(range(12))
    for index, atoms in enumerate(structures):
        atoms.calc = EMT()
        np.testing.assert_allclose(labels.energy_eV[index], atoms.get_potential_energy(), rtol=1e-12)
    assert read_labels(tmp_path / "r0" / "labels.zarr").n_structures == 8  # round 0's store as it was

    # Killed round 1: one of its shards lost its marker; the rerun labels that shard only.
    marker_path(tmp_path / "r1" / "shards" / "shard-00000002-00000004.zarr").unlink()
    resumed = label_round(tmp_path / "r1", structures[8:], teacher, previous, shard_size=2)
    assert (resumed["shards_labeled"], resumed["shards_reused"]) == (1, 1)
    assert [s["shard"] for s in resumed["shards"]] == ["shard-00000002-00000004.zarr"]
    np.testing.assert_array_equal(read_labels(tmp_path / "r1" / "labels.zarr").energy_eV, labels.energy_eV)
    assert {p: (marker_path(p).stat().st_mtime_ns, read_marker(p)) for p in previous} == untouched


def test_a_structure_labeled_twice_or_shards_of_another_teacher_are_refused(tmp_path):
    teacher = ase_teacher_settings("ase.calculators.emt:EMT")
    structures = rattled_molecules()
    label_round(tmp_path / "r0", structures[:4], teacher)
    previous = shards_in(tmp_path / "r0" / "shards")
    with pytest.raises(ValueError, match=r"sample_index 3 occurs twice \(previous shard .* and new structure 1\)"):
        label_round(tmp_path / "r1", [structures[8], structures[3]], teacher, previous)
    assert not (tmp_path / "r1" / "shards").exists()  # refused before labeling anything
    with pytest.raises(ValueError, match="sample_index 9 occurs twice"):
        label_round(tmp_path / "r1", [structures[9], structures[9]], teacher, previous)
    with pytest.raises(ValueError, match="other teacher settings"):
        label_round(tmp_path / "r1", structures[8:], dataclasses.replace(teacher, batch_size=3), previous)
    with pytest.raises(FileNotFoundError, match="did not finish"):
        shards_in(tmp_path / "r1" / "shards")
