"""The tiny end-to-end run: Snakemake on this repository's Snakefile and the tiny config, in a work
directory of its own (which holds `results/` and Snakemake's records, so that a copy of it is a
finished run too)."""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "tests" / "data" / "tiny_config.yaml"


@dataclass(frozen=True)
class TinyRun:
    """A finished tiny run: its work directory, the teacher cache it used and Snakemake's output."""

    workdir: Path
    cache: Path
    output: str

    @property
    def results(self) -> Path:
        return self.workdir / "results"

    @property
    def run_dir(self) -> Path:
        return self.results / "tiny"


def snakemake(workdir: Path, cache: Path, *args: str, edits: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    """Snakemake in ``workdir`` on the tiny config with the config files ``edits`` laid over it,
    the teacher built into ``cache`` (not into the models directory)."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(TINY_CONFIG),
        *map(str, edits),
        *args,
    ]
    env = {**os.environ, "MLFF_DISTILL_CACHE": str(cache)}
    env.pop("MLFF_DISTILL_MODELS_DIR", None)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def planned(run: TinyRun, edit: str, extra: tuple[str, ...] = ()) -> set[str]:
    """The jobs (rule name, and round number where it has one) a dry run plans after ``edit`` (YAML
    laid over the tiny config) on the finished ``run``."""
    edit_file = run.workdir.parent / f"edit-{run.workdir.name}-{abs(hash((edit, extra)))}.yaml"
    edit_file.write_text(edit)
    completed = snakemake(run.workdir, run.cache, "-n", *extra, edits=(edit_file,))
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    if "Nothing to be done" in output:
        return set()
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        name = re.match(r"(?:local)?rule (\w+):", block)
        if name and name.group(1) != "all":
            round_index = re.search(r"wildcards: round=(\d+)", block)
            jobs.add(name.group(1) + (round_index.group(1) if round_index else ""))
    assert jobs, output[-3000:]
    return jobs
