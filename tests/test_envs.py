"""The conda environment for `snakemake --sdm conda`: the same pins as pyproject.toml (with its
`materials` extra), and the project installed from a path that resolves (by the post-deploy script
Snakemake runs)."""

import os
import stat
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "envs" / "mlff-distill.yaml"
POST_DEPLOY = ROOT / "envs" / "mlff-distill.post-deploy.sh"


def test_env_pins_equal_pyproject_dependencies():
    """The dependencies and the `materials` extra (the teachers any config may choose)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = yaml.safe_load(ENV_FILE.read_text())["dependencies"]
    pip = next(entry["pip"] for entry in dependencies if isinstance(entry, dict))
    assert sorted(pip) == sorted(pyproject["dependencies"] + pyproject["optional-dependencies"]["materials"])
    assert "python=3.11" in dependencies


def test_no_relative_path_in_the_env_file():
    dependencies = yaml.safe_load(ENV_FILE.read_text())["dependencies"]
    pip = next(entry["pip"] for entry in dependencies if isinstance(entry, dict))
    assert not [line for line in pip if line.startswith((".", "/", "-e"))], pip


def test_the_rules_use_the_env_file_that_snakemake_finds():
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert 'CONDA_ENV = "../../envs/mlff-distill.yaml"' in common  # relative to workflow/rules/
    assert (ROOT / "workflow" / "rules" / "../../envs/mlff-distill.yaml").resolve() == ENV_FILE
    # Snakemake runs <env file stem>.post-deploy.sh from the same folder after creating the env
    assert POST_DEPLOY.is_file() and POST_DEPLOY.stat().st_mode & stat.S_IXUSR


def fake_python(tmp_path: Path) -> dict:
    """An environment whose `python` records its arguments instead of installing anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path / "args"}\n')
    (bin_dir / "python").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_post_deploy_installs_the_repository_it_runs_in(tmp_path):
    completed = subprocess.run(
        ["bash", str(POST_DEPLOY)], cwd=ROOT, env=fake_python(tmp_path), capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    project, no_deps = [line.split() for line in (tmp_path / "args").read_text().splitlines()]
    assert project[:3] == ["-m", "pip", "install"] and "--editable" in project and project[-1] == str(ROOT)
    assert no_deps[:3] == ["-m", "pip", "install"] and "--no-deps" in no_deps
    assert no_deps[-1] == str(ROOT / "envs" / "no-deps-requirements.txt")


def test_no_deps_requirements_are_pinned_and_named_by_the_code():
    from mlff_distill.teachers.torchani_runtime import TORCHANI_RUNTIME_REQUIREMENT

    lines = (ROOT / "envs" / "no-deps-requirements.txt").read_text().splitlines()
    pins = [line for line in lines if line.strip() and not line.startswith("#")]
    assert pins == [TORCHANI_RUNTIME_REQUIREMENT]
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps --requirement envs/no-deps-requirements.txt" in makefile


def test_post_deploy_refuses_another_folder(tmp_path):
    completed = subprocess.run(
        ["bash", str(POST_DEPLOY)], cwd=tmp_path, env=fake_python(tmp_path), capture_output=True, text=True
    )
    assert completed.returncode != 0 and "not the mlff-distill repository" in completed.stderr
    assert not (tmp_path / "args").exists()
