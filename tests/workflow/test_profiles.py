"""The SLURM profile: Snakemake plans the default DAG with it, each rule with its resources."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "slurm"


def test_profile_asks_for_the_slurm_executor_with_retries():
    settings = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert settings["executor"] == "slurm"
    assert settings["retries"] >= 1 and settings["jobs"] >= 1
    assert "attempt" in settings["default-resources"]["runtime"]


def planned_jobs(output: str) -> dict[str, dict]:
    """Rule name -> {"threads": int, "resources": {name: value}} from a dry run's job listing."""
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        name = re.match(r"(?:local)?rule (\w+):", block)
        if not name:
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        jobs[name.group(1)] = {
            "threads": int(threads.group(1)) if threads else 1,
            "resources": dict(item.split("=", 1) for item in resources.group(1).split(", ")),
        }
    return jobs


@pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason='snakemake-executor-plugin-slurm not installed: pip install "mlff-distill[slurm]"',
)
@pytest.mark.parametrize(
    "profile_args",
    [["--workflow-profile", "profiles/slurm"], ["--profile", "profiles/slurm", "--workflow-profile", "none"]],
)
def test_dry_run_plans_every_rule_with_its_slurm_resources(tmp_path, profile_args):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *profile_args, "--config", f"results_dir={tmp_path / 'results'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = planned_jobs(result.stdout + result.stderr)
    assert set("precompile sample label train explore tune evaluate report acceptance".split()) <= set(jobs)
    expected = {  # rule: (threads, mem_mb, runtime in minutes at the first attempt, GPUs)
        "sample": (4, "4000", "30", None),
        "explore": (8, "4000", "30", None),
        "label": (32, "64000", "240", None),
        "train": (8, "32000", "120", "1"),
        "tune": (4, "16000", "30", "1"),
        "evaluate": (8, "16000", "60", None),
    }
    for rule, (threads, mem_mb, runtime, gpu) in expected.items():
        planned = jobs[rule]
        assert planned["threads"] == threads, rule
        assert planned["resources"]["mem_mb"] == mem_mb, rule
        assert planned["resources"]["runtime"] == runtime, rule
        assert planned["resources"].get("gpu") == gpu, rule
