"""The precompile stage's record (what it compiles: tests/student/test_compilation.py; the cache
reuse itself: tests/workflow/test_pipeline.py)."""

import json

from mlff_distill.sampling.seeds import SEED_KEYS
from mlff_distill.settings import complete_config


def test_nothing_to_compile_is_recorded(tmp_path):
    from mlff_distill.stages.precompile import run

    config = complete_config({"train": {"compile": False}})
    train_loss_keys = ("compile", "batch_size", "energy_weight", "force_weight", "stress_weight", "hessian_weight")
    record_file = tmp_path / "precompile" / "compiled.json"
    run(
        seed_settings={key: config["sample"][key] for key in SEED_KEYS},
        target_systems=config["target"]["systems"],
        target_min_distance_A=config["target"]["min_distance_A"],
        student=config["student"],
        train_loss={key: config["train"][key] for key in train_loss_keys},
        try_compile=config["tune"]["try_compile"],
        record_file=record_file,
        cache_dir=tmp_path / "cache",
        log_file=tmp_path / "precompile.log",
        threads=1,
    )
    assert json.loads(record_file.read_text()) == {"training_loss": {"skipped": "train.compile is false"}}
    assert not (tmp_path / "cache").exists()
