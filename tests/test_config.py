"""The config: the schema is the one source of defaults, the typed settings mirror it, the shipped
configs validate, and wrong keys and types are named before any job."""

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from mlff_distill.config_check import config_errors
from mlff_distill.settings import SECTIONS, SampleSettings, TrainSettings, build, complete_config, section_settings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def default_config() -> dict:
    """config/config.yaml with the schema's defaults filled in, as the Snakefile sees it."""
    return complete_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))


def test_default_config_is_valid():
    assert config_errors(default_config(), SCHEMA) == []


def schema_properties(schema: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        schema = schema["properties"][key]
    return schema["properties"]


def test_settings_mirror_the_schema_and_carry_no_defaults_of_their_own():
    schema = yaml.safe_load(SCHEMA.read_text())

    def check(cls: type, path: tuple[str, ...]) -> None:
        fields = {field.name: field for field in dataclasses.fields(cls)}
        assert set(fields) == set(schema_properties(schema, path)), ".".join(path)
        hints = typing.get_type_hints(cls)
        for name, field in fields.items():
            assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING, name
            if dataclasses.is_dataclass(hints[name]):
                check(hints[name], (*path, name))

    for section, cls in SECTIONS.items():
        check(cls, (section,))
    assert set(SECTIONS) == {k for k, v in schema["properties"].items() if v.get("type") == "object"}


def test_every_schema_key_has_a_default():
    schema = yaml.safe_load(SCHEMA.read_text())

    def missing(properties: dict, path: str) -> list[str]:
        found = []
        for key, spec in properties.items():
            if "default" not in spec and key not in ("address", "timeout", "jobs"):  # label.scheduler's options
                found.append(f"{path}{key}")
            if spec.get("type") == "object" and "properties" in spec:
                found += missing(spec["properties"], f"{path}{key}.")
        return found

    assert missing(schema["properties"], "") == []


def test_config_yaml_writes_no_default_again():
    written = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    defaults = complete_config({})
    again = [key for key, value in written.items() if key != "run_name" and defaults.get(key) == value]
    assert again == [], f"config/config.yaml repeats schema defaults: {again}"


def test_settings_from_the_default_config_and_bad_sections_named():
    config = default_config()
    for section, cls in SECTIONS.items():
        assert dataclasses.is_dataclass(build(cls, config[section], section))
    sample = build(SampleSettings, config["sample"], "sample")
    assert sample.md.temperatures_K == [300, 600] and sample.rattle.sigma_A == [0.01, 0.05]
    with pytest.raises(ValueError, match=r"sample\.md: unknown keys \['temperature'\]"):
        build(SampleSettings, {**config["sample"], "md": {**config["sample"]["md"], "temperature": 3}}, "sample")
    assert section_settings(TrainSettings, "train", {"epochs": 3}).epochs == 3


def test_wrong_key_and_type_are_named():
    config = default_config()
    config["train"]["epochz"] = 3
    config["seed"] = "abc"
    problems = config_errors(config, SCHEMA)
    assert any(p.startswith("train:") and "epochz" in p for p in problems)
    assert any(p.startswith("seed:") and "integer" in p for p in problems)


def test_hessian_weight_without_hessian_labels_is_named():
    config = default_config()
    config["train"]["hessian_weight"] = 1.0
    assert [p.split(":")[0] for p in config_errors(config, SCHEMA)] == ["train.hessian_weight"]
    config["label"]["hessian_step_A"] = 0.01
    assert config_errors(config, SCHEMA) == []


def test_normal_mode_counts_must_match_temperatures():
    config = default_config()
    config["sample"]["normal_modes"].update(structures_per_seed=[100, 200], temperatures_K=[300, 600, 1000])
    problems = config_errors(config, SCHEMA)
    assert [p.split(":")[0] for p in problems] == ["sample.normal_modes.structures_per_seed"]
    assert "2 counts for 3 temperatures_K" in problems[0]
    config["sample"]["normal_modes"]["structures_per_seed"] = [100, 200, 300]
    assert config_errors(config, SCHEMA) == []


def shipped_config(*names: str) -> dict:
    """Config files laid over the default in turn, as Snakemake's ``--configfile`` does."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for name in names:
        update_config(config, yaml.safe_load((ROOT / "config" / name).read_text()))
    return complete_config(config)


def test_shipped_configs_are_valid_and_the_orb_config_stays_small():
    for name in ("orb.yaml", "full.yaml", "molecules.yaml", "materials.yaml"):
        assert config_errors(shipped_config(name), SCHEMA) == [], name
    chgnet = shipped_config("materials.yaml", "materials-chgnet.yaml")
    assert config_errors(chgnet, SCHEMA) == [] and chgnet["teacher"]["kind"] == "chgnet"
    assert chgnet["target"] == shipped_config("materials.yaml")["target"]  # the same silicon targets
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
