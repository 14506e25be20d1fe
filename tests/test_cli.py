"""The `mlff-distill` command: help for every subcommand, and `run` planning the Snakemake DAG. The
subcommands on a trained student are tested on the tiny run's student in `workflow/test_pipeline.py`."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlff_distill.cli import main

ROOT = Path(__file__).resolve().parents[1]
RULES = "sample_target sample precompile label train explore tune evaluate report acceptance".split()


def mlff_distill(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The installed `mlff-distill` command run with ``args``."""
    command = [str(Path(sys.executable).with_name("mlff-distill")), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def test_the_installed_command_and_every_subcommand_have_help(capsys):
    completed = mlff_distill("--help")
    assert completed.returncode == 0 and "usage: mlff-distill" in completed.stdout, completed.stderr
    for command in ("run", "evaluate", "md"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0 and f"usage: mlff-distill {command}" in capsys.readouterr().out


def test_run_subcommand_plans_the_same_dag(tmp_path):
    results = tmp_path / "results.yaml"
    results.write_text(f"results_dir: {tmp_path / 'results'}\n")
    tiny = ROOT / "tests" / "data" / "tiny_config.yaml"
    completed = mlff_distill("run", "--dry-run", "--configfile", str(tiny), "--configfile", str(results))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    output = completed.stdout + completed.stderr
    for rule in RULES:  # the summary lists rules, not rounds
        assert re.search(rf"\b{rule}\b", output), rule
    assert not (tmp_path / "results").exists()
