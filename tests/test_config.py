"""The config schema: the default validates; wrong keys and types are named before any job."""

import subprocess
import sys
from pathlib import Path

import yaml

from mlff_distill.config_check import config_errors

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def test_default_config_is_valid():
    assert config_errors(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), SCHEMA) == []


def test_wrong_key_and_type_are_named():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["train"]["epochz"] = 3
    config["seed"] = "abc"
    problems = config_errors(config, SCHEMA)
    assert any(p.startswith("train:") and "epochz" in p for p in problems)
    assert any(p.startswith("seed:") and "integer" in p for p in problems)


def test_hessian_weight_without_hessian_labels_is_named():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["train"]["hessian_weight"] = 1.0
    assert [p.split(":")[0] for p in config_errors(config, SCHEMA)] == ["train.hessian_weight"]
    config["label"]["hessian_step_A"] = 0.01
    assert config_errors(config, SCHEMA) == []


def test_normal_mode_counts_must_match_temperatures():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["sample"]["normal_modes"].update(structures_per_seed=[100, 200], temperatures_K=[300, 600, 1000])
    problems = config_errors(config, SCHEMA)
    assert [p.split(":")[0] for p in problems] == ["sample.normal_modes.structures_per_seed"]
    assert "2 counts for 3 temperatures_K" in problems[0]
    config["sample"]["normal_modes"]["structures_per_seed"] = [100, 200, 300]
    assert config_errors(config, SCHEMA) == []


def shipped_config(name: str) -> dict:
    """A config file laid over the default, as Snakemake's ``--configfile`` does."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "config" / name).read_text()))
    return config


def test_shipped_configs_are_valid_and_the_orb_config_stays_small():
    for name in ("orb.yaml", "full.yaml"):
        assert config_errors(shipped_config(name), SCHEMA) == [], name
    orb = shipped_config("orb.yaml")["sample"]
    # Orb labels ~0.3 structures/s on 2 CPU cores: no teacher MD or normal modes (from the
    # default underneath), only the crystals' rattles, strains and vacancies
    assert orb["molecules"] == [] and orb["md"]["frames_per_trajectory"] == 0
    assert orb["normal_modes"]["structures_per_seed"] == 0
    per_seed = sum(orb[key]["structures_per_seed"] for key in ("rattle", "rattle_strain", "vacancies"))
    assert per_seed * len(orb["crystals"]) == 220


def test_snakemake_stops_on_bad_config_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("label:\n  shard_size: -3\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--configfile",
            str(bad),
            "--config",
            f"results_dir={tmp_path / 'results'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "label.shard_size" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def test_dry_run_and_lint_are_clean(tmp_path):
    for flag in ("-n", "--lint"):
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", flag, "--config", f"results_dir={tmp_path / 'results'}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
