"""Where shards are labeled (`mlff_distill.labeling.cluster`): how many local workers, an existing
Dask scheduler by address, refused scheduler kinds, SLURM job scripts through dask-jobqueue, and a
label job's own process confined to its cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT

from mlff_distill.labeling.cluster import IN_PROCESS_MAX_CORES, local_workers, slurm_cluster
from mlff_distill.labeling.shards import label_structures
from mlff_distill.settings import TeacherSettings, section_settings
from mlff_distill.store import read_labels


def emt_settings() -> TeacherSettings:
    return section_settings(
        TeacherSettings, "teacher", {"kind": "ase", "name": "emt", "factory": "ase.calculators.emt:EMT"}
    )


def rattled_molecules() -> list:
    """4 small H/C/N/O molecules, rattled, with the info keys labeling needs."""
    structures = []
    for index, name in enumerate(["CH4", "H2O", "NH3", "C2H6"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=index)
        atoms.info.update(split=["train", "val", "test"][index % 3], group=index // 4, sample_index=index)
        structures.append(atoms)
    return structures


def test_local_workers_label_in_the_job_on_few_cores_and_take_what_is_set():
    assert [local_workers(None, cores) for cores in (1, 2, 3, 8)] == [0, 0, 3, 8]
    assert IN_PROCESS_MAX_CORES == 2
    assert local_workers(2, 2) == 2  # set: workers even on 2 cores
    assert local_workers(0, 16) == 0  # set: the job's own process even on 16


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_confine_to_cores_holds_every_thread_to_the_jobs_cores():
    """In a child process (so that the test's own process keeps its cores): a thread started before
    the call and one started after it run only on the one core it returns."""
    child = textwrap.dedent(
        """
        import json, os, threading
        from mlff_distill.labeling.cluster import confine_to_cores
        seen = {}
        started = threading.Event()
        def early():
            started.wait()
            seen["early"] = sorted(os.sched_getaffinity(0))
        thread = threading.Thread(target=early)
        thread.start()
        cores = confine_to_cores(1)
        started.set()
        thread.join()
        late = threading.Thread(target=lambda: seen.update(late=sorted(os.sched_getaffinity(0))))
        late.start()
        late.join()
        print(json.dumps([cores, seen["early"], seen["late"], sorted(os.sched_getaffinity(0))]))
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
    cores, early, late, main = json.loads(out)
    assert len(cores) == 1 and cores[0] in os.sched_getaffinity(0)
    assert early == late == main == cores


def test_existing_scheduler_by_address(tmp_path):
    from distributed import LocalCluster

    structures = rattled_molecules()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = label_structures(
            structures,
            emt_settings(),
            tmp_path / "shards",
            tmp_path / "labels.zarr",
            n_workers=0,
            shard_size=2,
            attrs={},
            scheduler={"kind": "address", "address": cluster.scheduler_address},
        )
    assert (summary["scheduler"], summary["shards_labeled"], summary["n_failed"]) == ("address", 2, 0)
    energies = []
    for atoms in structures:
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
    np.testing.assert_allclose(read_labels(tmp_path / "labels.zarr").energy_eV, energies, rtol=1e-12)


@pytest.mark.parametrize(
    "scheduler, message",
    [
        ({"kind": "kubernetes"}, "is not one of local, address, slurm"),
        ({"kind": "address"}, "needs 'address'"),
    ],
)
def test_bad_scheduler_is_refused_before_labeling(tmp_path, scheduler, message):
    with pytest.raises(ValueError, match=message):
        label_structures(
            rattled_molecules(),
            emt_settings(),
            tmp_path / "shards",
            tmp_path / "labels.zarr",
            n_workers=1,
            shard_size=4,
            attrs={},
            scheduler=scheduler,
        )
    assert not (tmp_path / "shards").exists()


SLURM = {"kind": "slurm", "cores": 4, "memory": "16GB", "walltime": "01:30:00", "queue": "cpu-short", "jobs": 3}


def test_slurm_scheduler_without_dask_jobqueue_says_what_to_install():
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install dask-jobqueue==0\.9\.0"):
            slurm_cluster(SLURM)
    else:
        pytest.skip("dask-jobqueue is installed: test_slurm_job_script covers the slurm kind")


def test_slurm_job_script_holds_the_resources():
    pytest.importorskip("dask_jobqueue")
    cluster = slurm_cluster(SLURM, {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p cpu-short" in script and "#SBATCH -t 01:30:00" in script
    assert "#SBATCH --cpus-per-task=4" in script and "#SBATCH --mem=15G" in script
    assert "--nworkers 4" in script and "--nthreads 1" in script
    assert "export XLA_FLAGS=--xla_cpu_multi_thread_eigen=false" in script
