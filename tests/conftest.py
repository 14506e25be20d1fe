"""Fixtures shared by the tests: the real ANI-1x teacher files from ../shared/teachers."""

import os
from pathlib import Path

import pytest

# Triton kernels run on the CPU only through its interpreter, chosen when triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]


def models_dir_or_none() -> Path | None:
    """$MLFF_DISTILL_MODELS_DIR, else ../shared/teachers beside the repository, if present."""
    candidate = Path(os.environ.get("MLFF_DISTILL_MODELS_DIR", ROOT.parent / "shared" / "teachers"))
    return candidate if (candidate / "fennol-pmc" / "ANI1X").is_dir() else None


@pytest.fixture(scope="session")
def models_dir() -> Path:
    found = models_dir_or_none()
    if found is None:
        pytest.skip("ANI-1x files not found: set MLFF_DISTILL_MODELS_DIR or place ../shared/teachers")
    return found


@pytest.fixture(scope="session")
def ani1x_teacher_settings(models_dir):
    """FeNNol-PMC's ANI-1x files from the models directory (`TeacherSettings`)."""
    from mlff_distill.settings import TeacherSettings, section_settings

    return section_settings(TeacherSettings, "teacher", {"source": "fennol-pmc", "models_dir": str(models_dir)})


@pytest.fixture(scope="session")
def ani1x_teacher(ani1x_teacher_settings):
    from mlff_distill.teachers import load_teacher

    return load_teacher(ani1x_teacher_settings)


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: one intra-op thread is faster and steadier than several on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
