"""Real ASE calculators that fail on chosen structures, for testing how labeling handles failures.

Used as teachers through ``{"kind": "ase", "factory": "failing_calculator:FailingEMT"}`` (this
folder is on ``sys.path`` under pytest). A structure is chosen by ``atoms.info["poison"]``:
``"raise"`` makes `FailingEMT` raise, ``"nan"`` makes it return NaN energy and forces. Others get
ASE's EMT energies and forces (EMT covers H, C, N, O).
"""

import numpy as np
from ase.calculators.emt import EMT


class TeacherBlewUp(RuntimeError):
    """The error `FailingEMT` raises for a poisoned structure."""


class FailingEMT(EMT):
    """EMT that raises on ``info["poison"] == "raise"`` and gives NaN on ``"nan"``."""

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=None):
        poison = (atoms if atoms is not None else self.atoms).info.get("poison")
        if poison == "raise":
            raise TeacherBlewUp(f"cannot handle {atoms.get_chemical_formula()}")
        if system_changes is None:
            super().calculate(atoms, properties)
        else:
            super().calculate(atoms, properties, system_changes)
        if poison == "nan":
            self.results["energy"] = np.nan
            self.results["free_energy"] = np.nan
            self.results["forces"] = np.full((len(atoms), 3), np.nan)


class SlowEMT(EMT):
    """EMT that takes at least ``delay_s`` seconds per call: time to kill a labeling run midway."""

    def __init__(self, delay_s: float = 0.3, **kwargs):
        super().__init__(**kwargs)
        self.delay_s = delay_s

    def calculate(self, *args, **kwargs):
        import time

        time.sleep(self.delay_s)
        super().calculate(*args, **kwargs)
