"""Save and load a student as one file: hyperparameters, weights and free-form metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch

from mlff_distill.student.model import StudentPotential

FORMAT = "mlff_distill.student/1"


def save_student(path: Union[str, Path], model: StudentPotential, metadata: dict[str, Any]) -> None:
    """Write ``model`` and ``metadata`` to ``path`` with ``torch.save``.

    ``metadata`` must hold plain Python values (str, int, float, bool, None, lists, dicts) or
    tensors, so that the file loads with ``weights_only=True``.
    """
    torch.save(
        {
            "format": FORMAT,
            "hyperparameters": model.hyperparameters,
            "state_dict": model.state_dict(),
            "metadata": metadata,
        },
        path,
    )


def load_student(
    path: Union[str, Path], map_location: Union[str, torch.device] = "cpu"
) -> tuple[StudentPotential, dict[str, Any]]:
    """Rebuild the model saved by `save_student` (in its saved dtype, eval mode) and its metadata."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a student checkpoint (format {checkpoint.get('format')!r})")
    model = StudentPotential(**checkpoint["hyperparameters"])
    model.load_state_dict(checkpoint["state_dict"], assign=True)  # keeps the saved dtypes
    return model.to(map_location).eval(), checkpoint["metadata"]
