"""The TorchScript export runs without this package and gives the Python model's numbers."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlff_distill.student import StudentPotential, energy_forces_stress
from mlff_distill.student.export import export_torchscript, load_torchscript

pytestmark = pytest.mark.usefixtures("single_thread")

# Runs in a fresh interpreter: plain torch and numpy only.
LOADER = """
import json, sys
import numpy as np
import torch
torch.set_num_threads(1)
extra = {"metadata.json": ""}
student = torch.jit.load(sys.argv[1], _extra_files=extra)
inputs = np.load(sys.argv[2])
results = {}
for name in ("molecule", "crystal"):
    out = student(*(torch.as_tensor(inputs[f"{name}_{key}"]) for key in ("numbers", "positions", "cell", "pbc")))
    for key, value in out.items():
        results[f"{name}_{key}"] = value.detach().numpy()
np.savez(sys.argv[3], **results)
print(json.dumps({"metadata": json.loads(extra["metadata.json"]),
                  "imported_mlff_distill": any(m.startswith("mlff_distill") for m in sys.modules)}))
"""


@pytest.mark.parametrize("angular_order", [1, 3], ids=["painn", "angular-moments"])
def test_torchscript_file_matches_python_model_without_the_package(tmp_path, angular_order: int) -> None:
    torch.manual_seed(0)
    model = StudentPotential(
        species=[1, 6, 8, 14],
        n_features=16,
        reference_energies_eV={1: -13.6, 8: -2041.0},
        angular_order=angular_order,
        angular_channels=4,
    )
    model = model.double()
    path = tmp_path / "student.torchscript.pt"
    export_torchscript(model, path, {"teacher": {"name": "ani1x"}, "val_force_rmse_eV_per_A": 0.05})

    crystal = bulk("Si", "diamond", a=5.43, cubic=True)
    crystal.rattle(0.05, seed=2)
    structures = {"molecule": molecule("CH3CH2OH"), "crystal": crystal}
    inputs = {}
    for name, atoms in structures.items():
        inputs.update(
            {
                f"{name}_numbers": atoms.numbers,
                f"{name}_positions": atoms.positions,
                f"{name}_cell": atoms.cell.array,
                f"{name}_pbc": atoms.pbc,
            }
        )
    np.savez(tmp_path / "inputs.npz", **inputs)
    (tmp_path / "loader.py").write_text(LOADER)
    completed = subprocess.run(
        [sys.executable, "loader.py", str(path), "inputs.npz", "outputs.npz"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert not report["imported_mlff_distill"]
    assert report["metadata"]["teacher"] == {"name": "ani1x"}
    assert report["metadata"]["hyperparameters"]["n_features"] == 16

    outputs = np.load(tmp_path / "outputs.npz")
    for name, atoms in structures.items():
        energy, forces, stress = energy_forces_stress(
            model,
            torch.as_tensor(atoms.numbers),
            torch.as_tensor(atoms.positions),
            torch.as_tensor(atoms.cell.array)[None],
            torch.as_tensor(atoms.pbc)[None],
            torch.tensor([0, len(atoms)]),
            compute_stress=True,
        )
        np.testing.assert_allclose(outputs[f"{name}_energy_eV"], energy[0].item(), rtol=1e-12)
        np.testing.assert_allclose(outputs[f"{name}_forces_eV_per_A"], forces.numpy(), atol=1e-10)
        np.testing.assert_allclose(outputs[f"{name}_stress_eV_per_A3"], stress[0].numpy(), atol=1e-12)
    assert np.isnan(outputs["molecule_stress_eV_per_A3"]).all()
    assert np.isfinite(outputs["crystal_stress_eV_per_A3"]).all()
    assert np.abs(outputs["crystal_forces_eV_per_A"]).max() > 1e-3  # a non-trivial comparison


def test_batch_method_and_loader(tmp_path) -> None:
    torch.manual_seed(1)
    model = StudentPotential(species=[1, 6, 8], n_features=8).double()
    path = tmp_path / "student.torchscript.pt"
    export_torchscript(model, path, {"teacher": "test"})
    scripted, metadata = load_torchscript(path)
    assert metadata["teacher"] == "test"
    water, methane = molecule("H2O"), molecule("CH4")
    numbers = torch.as_tensor(np.concatenate([water.numbers, methane.numbers]))
    positions = torch.as_tensor(np.concatenate([water.positions, methane.positions]))
    cell, pbc, ptr = (
        torch.zeros(2, 3, 3, dtype=torch.float64),
        torch.zeros(2, 3, dtype=torch.bool),
        torch.tensor([0, 3, 8]),
    )
    out = scripted.batch(numbers, positions, cell, pbc, ptr)
    energy, forces, _ = energy_forces_stress(model, numbers, positions, cell, pbc, ptr, compute_stress=False)
    np.testing.assert_allclose(out["energy_eV"].numpy(), energy.numpy(), rtol=1e-12)
    np.testing.assert_allclose(out["forces_eV_per_A"].numpy(), forces.numpy(), atol=1e-10)
    with pytest.raises(Exception, match="unknown species"):
        scripted(
            torch.tensor([29]),
            torch.zeros(1, 3, dtype=torch.float64),
            torch.zeros(3, 3),
            torch.zeros(3, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="metadata.json"):
        torch.jit.save(torch.jit.script(model), str(tmp_path / "bare.pt"))
        load_torchscript(tmp_path / "bare.pt")
