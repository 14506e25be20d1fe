"""The tiny end-to-end run, made once per test session: the first pytest-xdist worker to need it
runs it, the others wait for it (a file lock) and share it."""

import json

import pytest
from filelock import FileLock
from tiny_pipeline import TinyRun, snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id) -> TinyRun:
    """The tiny config on the default teacher, built from the torchani wheel into an empty cache.
    Tests read it and must not change it (copy the work directory to rerun anything)."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # the directory that holds every worker's own
    run = TinyRun(workdir=shared / "tiny-run", cache=shared / "tiny-cache", output="")
    record = shared / "tiny-run.json"
    with FileLock(str(shared / "tiny-run.lock")):
        if not record.is_file():
            run.workdir.mkdir()
            completed = snakemake(run.workdir, run.cache, "--cores", "2")
            output = completed.stdout + completed.stderr
            record.write_text(json.dumps({"returncode": completed.returncode, "output": output}))
    finished = json.loads(record.read_text())
    assert finished["returncode"] == 0, finished["output"][-10000:]
    return TinyRun(workdir=run.workdir, cache=run.cache, output=finished["output"])
