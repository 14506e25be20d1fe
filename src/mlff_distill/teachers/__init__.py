"""Teachers: the slow, accurate models a student learns from.

`load_teacher` turns the ``teacher:`` section of the config into a `Teacher`. Model files are looked
up in a models directory: ``teacher.models_dir`` in the config, else the environment variable
``MLFF_DISTILL_MODELS_DIR``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mlff_distill.teachers.base import Teacher, TeacherCalculator, TeacherIdentity, TeacherOutput

MODELS_DIR_ENV = "MLFF_DISTILL_MODELS_DIR"

# FeNNol-PMC (github.com/thomasple/FeNNol-PMC, commit 7448eec72cc26c8e600bc414a72ab19cfa5db2d7),
# folder ANI/ANI1X, stored under <models_dir>/fennol-pmc/ANI1X/: SHA-256 of each member.
ANI1X_SHA256 = {
    "ani1x_model0.fnx": "7d1b256b383041db11b0d448873b61e5e58eb76f8d60d416e0e89b4686a27e86",
    "ani1x_model1.fnx": "03aacd04d46d3a20d15e0dfcb14056a464073ddea8399598e501e4a58e737504",
    "ani1x_model2.fnx": "7425c078e966ace366f8c37de2517297d2be9c3479eab564e6f6ac42dd2c5a33",
    "ani1x_model3.fnx": "92f6c523fc7bc6c613e27bcfbafbb39044267fcf6ae34e2847453f26ca6c3ba5",
    "ani1x_model4.fnx": "b9a8291eb7c92e4a4212578bf263d30ee690ce724bccd17548bad47e6967a166",
    "ani1x_model5.fnx": "87cc2415ef448a0534aa3e4cced3f9338721245b5921d2c92e3202ba525be562",
    "ani1x_model6.fnx": "9213ed8136cdfc7f3116ebe6ed3678dc0b9d1fdc5eb4180ac90a8c54b31d59f3",
    "ani1x_model7.fnx": "17799e691c9395a9899e0d743083e6ac9e9c616561bbda86e9c33ae31200af73",
}
ANI1X_SUBDIR = Path("fennol-pmc") / "ANI1X"


def resolve_models_dir(configured: str | None) -> Path:
    """The models directory: the configured path, else ``$MLFF_DISTILL_MODELS_DIR``."""
    chosen = configured or os.environ.get(MODELS_DIR_ENV)
    if not chosen:
        raise FileNotFoundError(
            "No models directory: set teacher.models_dir in the config or the environment "
            f"variable {MODELS_DIR_ENV} (for example to ../shared/teachers)."
        )
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"Models directory {path} does not exist.")
    return path


def ani1x_files(models_dir: Path) -> list[Path]:
    """The 8 ANI-1x ``.fnx`` files under ``models_dir``, each checked against its SHA-256."""
    files = []
    for file_name, expected in ANI1X_SHA256.items():
        path = models_dir / ANI1X_SUBDIR / file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"ANI-1x member {file_name} not found: place FeNNol-PMC's ANI/ANI1X/{file_name} "
                f"at {path}."
            )
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise ValueError(f"{path}: SHA-256 {actual} differs from FeNNol-PMC's {expected}.")
        files.append(path)
    return files


def load_teacher(teacher_config: dict) -> Teacher:
    """Build the teacher named by the config's ``teacher:`` section."""
    kind, name = teacher_config["kind"], teacher_config["name"]
    if (kind, name) == ("fennol", "ani1x"):
        from mlff_distill.teachers.fennol_ensemble import FennolEnsembleTeacher

        files = ani1x_files(resolve_models_dir(teacher_config.get("models_dir")))
        return FennolEnsembleTeacher(
            files, name="fennol-pmc/ani1x", batch_size=teacher_config["batch_size"],
            float64=teacher_config["precision"] == "float64",
        )
    raise ValueError(f"teacher: kind={kind!r}, name={name!r} is not supported")


__all__ = [
    "Teacher", "TeacherCalculator", "TeacherIdentity", "TeacherOutput", "load_teacher",
    "resolve_models_dir", "MODELS_DIR_ENV",
]
